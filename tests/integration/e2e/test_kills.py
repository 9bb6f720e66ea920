"""Kill -9 the agent, the broker or the server in the middle of a backup.

In every case: no half recovery point becomes visible, the next backup succeeds, and every
committed recovery point restores byte-identical (DESIGN.md invariant 3).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import Stack
from tests.support.tree_compare import assert_same_tree

pytestmark = pytest.mark.crash

MiB = 1024 * 1024


def make_source(root: Path, files: int = 12, size: int = 24 * MiB) -> None:
    """Incompressible data, so the backup runs long enough to be interrupted."""
    root.mkdir()
    for i in range(files):
        with open(root / f"f{i:02}.bin", "wb") as f:
            f.write(os.urandom(size))
    (root / "small.txt").write_text("small")


def start_and_wait_progress(stack: Stack, ds_id: str, min_bytes: int = 20 * MiB) -> str:
    job = stack.backup(ds_id, wait=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        j = stack.job(job["id"])
        if j["state"] not in ("queued", "running"):
            raise AssertionError(f"backup ended before it could be interrupted: {j}")
        if (j.get("progress") or {}).get("bytes", 0) >= min_bytes:
            return str(job["id"])
        time.sleep(0.05)
    raise AssertionError("backup made no progress")


def assert_restores(stack: Stack, ds_id: str, src: Path, tmp: Path) -> None:
    """Every committed RP of the source restores to exactly the source (it never changed)."""
    for rp in stack.recovery_points(ds_id):
        target = tmp / f"restore-{rp['id']}"
        stack.cli(
            "Start-Restore",
            "-RecoveryPoint",
            rp["id"],
            "-TargetPath",
            str(target),
            "-Wait",
            check=True,
        )
        assert_same_tree(src, target / str(src).lstrip("/"))


def finish(stack: Stack, job_id: str) -> dict[str, Any]:
    return stack.wait_job(job_id, timeout=120)


def interrupted_backup(stack: Stack, tmp_path: Path) -> tuple[Path, str, str]:
    """An agent, a data source of incompressible files, and a backup of it under way:
    (source folder, data source id, job id)."""
    src = tmp_path / "src"
    make_source(src)
    stack.add_agent("alpha")
    ds = stack.add_files_source("alpha", [src])
    return src, ds["id"], start_and_wait_progress(stack, ds["id"])


def test_agent_killed_mid_backup(stack: Stack, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_source(src)
    agent = stack.add_agent("alpha")
    ds = stack.add_files_source("alpha", [src])
    job_id = start_and_wait_progress(stack, ds["id"])
    agent.stop(signal.SIGKILL)
    assert stack.recovery_points(ds["id"]) == []
    agent.start()
    job = finish(stack, job_id)
    assert job["state"] == "failed" and "restarted" in (job["error"] or ""), job
    assert stack.recovery_points(ds["id"]) == []
    assert stack.backup(ds["id"])["state"] == "succeeded"
    assert len(stack.recovery_points(ds["id"])) == 1
    assert_restores(stack, ds["id"], src, tmp_path)


def test_broker_killed_mid_backup(stack: Stack, tmp_path: Path) -> None:
    src, ds_id, job_id = interrupted_backup(stack, tmp_path)
    stack.server._kill_managed_broker()  # the server's supervisor restarts it
    job = finish(stack, job_id)
    # The data plane is HTTP: the backup itself goes on; its result arrives after the
    # agent reconnects to the restarted broker.
    assert job["state"] == "succeeded", job
    assert stack.backup(ds_id)["state"] == "succeeded"
    assert len(stack.recovery_points(ds_id)) == 2
    assert_restores(stack, ds_id, src, tmp_path)


def test_server_killed_mid_backup(stack: Stack, tmp_path: Path) -> None:
    src, ds_id, job_id = interrupted_backup(stack, tmp_path)
    stack.server.kill9()
    stack.server.start()
    job = finish(stack, job_id)
    assert job["state"] == "failed", job
    assert stack.recovery_points(ds_id) == []
    stack.wait_agent_online("alpha")
    assert stack.backup(ds_id)["state"] == "succeeded"
    assert len(stack.recovery_points(ds_id)) == 1
    assert_restores(stack, ds_id, src, tmp_path)
