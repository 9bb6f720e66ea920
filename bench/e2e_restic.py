"""restic, the reference the end-to-end benchmark compares Stockade with.

One local repository on the same disk as the Stockade pool, restic's defaults (repository
format of its version, compression "auto", its cache on) with the cache directory kept
under the benchmark's run directory, so runs do not share or leave caches behind. Every
command runs through `run_measured`, which reports that one process's CPU and peak RSS.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.e2e_procs import Run, run_measured

INSTALL_HINT = (
    "restic is not on PATH: install it with `apt-get install -y restic` (Debian 12 ships"
    " restic 0.14), or pass --skip-restic to debug the Stockade side alone"
)
PASSWORD = "stockade-bench"


class ResticError(RuntimeError):
    """A restic command failed; the message holds its command line and stderr."""


def find_restic() -> str | None:
    return shutil.which("restic")


@dataclass
class Restic:
    binary: str
    repo: Path
    cache: Path
    logs: Path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
        env.update(
            RESTIC_REPOSITORY=str(self.repo),
            RESTIC_PASSWORD=PASSWORD,
            RESTIC_CACHE_DIR=str(self.cache),
        )
        return env

    def version(self) -> str:
        out = subprocess.run(
            [self.binary, "version"], capture_output=True, text=True, check=True
        ).stdout
        found = re.search(r"restic (\S+)", out)
        return found.group(1) if found else out.strip()

    def _run(self, name: str, *args: str) -> Run:
        run = run_measured([self.binary, *args], self.env(), self.logs, f"restic-{name}")
        if run.code != 0:
            raise ResticError(
                f"restic {' '.join(args)} exited {run.code} (repo {self.repo}):\n{run.stderr}"
            )
        return run

    def init(self) -> int:
        """Create the repository; returns its format version."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self._run("init", "init")
        config = json.loads(self._run("config", "cat", "config").stdout)
        return int(config["version"])

    def backup(self, name: str, source: Path) -> tuple[Run, dict[str, Any]]:
        """`restic backup` of `source` (the previous snapshot of that path is the parent);
        returns the measured run and restic's JSON summary."""
        run = self._run(name, "backup", "--json", "--host", "bench", str(source))
        for line in reversed(run.stdout.splitlines()):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("message_type") == "summary":
                return run, doc
        raise ResticError(f"restic backup of {source} printed no JSON summary:\n{run.stdout}")

    def restore(self, name: str, snapshot: str, target: Path) -> Run:
        """`restic restore SNAPSHOT --target TARGET` (absolute paths land below TARGET)."""
        return self._run(name, "restore", snapshot, "--target", str(target))
