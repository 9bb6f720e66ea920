"""Stockade as the end-to-end benchmark drives it: one server, one agent, the CLI.

Built on `tests.support.stack` (the real `stockade-server` with its own Mosquitto on free
loopback ports, `stockade-agent`, the `stockade` CLI). Differences from the tests: the
agent runs at its default log level (info; the tests run it at debug), the server keeps
its default heartbeat settings (see `Stockade.start`), and every job is
measured: the wall time from the `Start-Backup` / `Start-Restore` call until polling the
REST API (every 0.1 s, in this process) sees the job end, the job's own
started_at..ended_at, and the CPU seconds and peak RSS of the server and the
agent during the job (`bench.e2e_procs`; the peak is reset before each job when the kernel
allows it, else it is the peak since the process started).
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.e2e_procs import cpu_seconds, peak_rss_mib, reset_peak_rss
from tests.support.stack import BIN, AgentProc, ServerProc, Stack

AGENT_NAME = "bench"
JOB_TIMEOUT = 3600.0  # seconds one job may take
POLL_SECONDS = 0.1
HEARTBEAT_DEFAULTS = [
    "--set",
    "agents.heartbeat_seconds=30",
    "--set",
    "agents.offline_after_seconds=90",
]
TRANSIENT_GRACE = 60.0  # seconds of failing polls before the run gives up
FINAL_STATES = frozenset({"succeeded", "succeeded_with_warnings", "failed", "cancelled"})


class StockadeError(RuntimeError):
    """A Stockade job did not succeed; the message holds the job and the log tails."""


class BenchAgent(AgentProc):
    """`stockade-agent run` at its default log level, as an installed agent runs."""

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(BIN / "stockade-agent"), "run", "--state-dir", str(self.state_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()


@dataclass(frozen=True)
class DaemonUsage:
    """CPU seconds and peak RSS (MiB) of one long-lived process over one job."""

    cpu: float
    peak_rss_mib: float


@dataclass(frozen=True)
class JobRun:
    """One finished job: the CLI's wall time, the job's own time, its document, usage."""

    wall: float
    job_seconds: float
    queued: float  # created_at..started_at: dispatch until the agent accepted
    job: dict[str, Any]
    usage: dict[str, DaemonUsage]  # "server", "agent"
    peak_reset: bool  # False: peaks are since process start, not per job


@dataclass
class Stockade:
    stack: Stack
    agent: AgentProc
    transient_errors: int = 0  # failed job polls that were retried

    @classmethod
    def start(cls, base: Path) -> Stockade:
        base.mkdir(parents=True, exist_ok=True)
        # The test stack expects a heartbeat every 2 s and calls an agent offline after 6 s
        # of silence, but the agent beats every 30 s whatever the server says: jobs would
        # then wait up to 30 s for the next beat. Back to the server's defaults (30 s, 90 s).
        server = ServerProc(base, extra=HEARTBEAT_DEFAULTS)
        stack = Stack(base, server)
        try:
            server.start()
            token = stack.cli("New-AgentToken", "-Json", check=True).json()["token"]
            agent = BenchAgent(server, base / f"agent-{AGENT_NAME}", AGENT_NAME)
            reg = agent.register(token)
            if reg.returncode != 0:
                raise StockadeError(f"stockade-agent register failed:\n{reg.stdout}{reg.stderr}")
            stack.agents[AGENT_NAME] = agent
            agent.start()
            stack.wait_agent_online(AGENT_NAME)
        except BaseException:
            stack.close()
            raise
        return cls(stack, agent)

    def pids(self) -> dict[str, int]:
        assert self.stack.server.proc is not None and self.agent.proc is not None
        return {"server": self.stack.server.proc.pid, "agent": self.agent.proc.pid}

    def add_source(self, path: Path) -> str:
        ds_id: str = self.stack.add_files_source(AGENT_NAME, [path])["id"]
        return ds_id

    def _measured(self, what: str, start_cli: Callable[[], dict[str, Any]]) -> JobRun:
        pids = self.pids()
        reset = all([reset_peak_rss(pid) for pid in pids.values()])
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.perf_counter()
        job = self._wait(what, start_cli())
        wall = time.perf_counter() - started
        usage = {
            name: DaemonUsage(cpu_seconds(pid) - cpu0[name], peak_rss_mib(pid))
            for name, pid in pids.items()
        }
        if job.get("state") != "succeeded":
            raise StockadeError(
                f"{what}: job {job.get('id')} ended {job.get('state')}: {job.get('error')}\n"
                f"--- server log ---\n{self.stack.server.tail()}\n"
                f"--- agent log ---\n{self.agent.tail()}"
            )
        seconds = float(job["ended_at"]) - float(job["started_at"])
        queued = float(job["started_at"]) - float(job["created_at"])
        return JobRun(wall, seconds, queued, job, usage, reset)

    def _wait(self, what: str, job: dict[str, Any]) -> dict[str, Any]:
        """Poll the job over the REST API until it ends.

        In-process polling rather than the CLI's -Wait: it costs no interpreter start per
        poll on a 2-core machine, and a refused or reset connection is retried (counted
        in `transient_errors`) instead of ending the run."""
        deadline = time.monotonic() + JOB_TIMEOUT
        failing_since: float | None = None
        while job.get("state") not in FINAL_STATES:
            if time.monotonic() > deadline:
                raise StockadeError(f"{what}: job {job.get('id')} still {job.get('state')}")
            time.sleep(POLL_SECONDS)
            try:
                status, doc = self.stack.server.api("GET", f"/api/v1/jobs/{job['id']}")
            except (urllib.error.URLError, OSError) as err:
                self.transient_errors += 1
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > TRANSIENT_GRACE:
                    raise StockadeError(f"{what}: server unreachable: {err}") from err
                continue
            failing_since = None
            if status != 200 or not isinstance(doc, dict):
                raise StockadeError(f"{what}: GET job {job['id']} answered {status}: {doc!r}")
            job = doc
        return job

    def _start(self, *args: str) -> dict[str, Any]:
        res = self.stack.cli(*args, "-Json")
        if res.code != 0:
            raise StockadeError(f"stockade {' '.join(args)} exited {res.code}: {res.err}")
        doc = res.json()
        job: dict[str, Any] = doc[0] if isinstance(doc, list) else doc
        return job

    def backup(self, ds_id: str) -> JobRun:
        return self._measured(
            f"backup of {ds_id}", lambda: self._start("Start-Backup", "-DataSource", ds_id)
        )

    def latest_rp(self, ds_id: str) -> str:
        rps = self.stack.recovery_points(ds_id)
        if not rps:
            raise StockadeError(f"data source {ds_id} has no recovery point")
        rp_id: str = max(rps, key=lambda rp: float(rp["created_at"]))["id"]
        return rp_id

    def restore(self, rp_id: str, target: Path) -> JobRun:
        return self._measured(
            f"restore of {rp_id} to {target}",
            lambda: self._start(
                "Start-Restore", "-RecoveryPoint", rp_id, "-TargetPath", str(target)
            ),
        )

    def pool(self) -> dict[str, Any]:
        doc = self.stack.cli("Get-StoragePool", "-Json", check=True).json()
        pool: dict[str, Any] = doc[0] if isinstance(doc, list) else doc
        return pool

    def close(self) -> None:
        self.stack.close()
