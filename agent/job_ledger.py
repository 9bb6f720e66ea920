"""The agent's durable record of the jobs it accepted: ``<state_dir>/jobs.json``.

Commands arrive over MQTT with QoS 1, so one command may be delivered twice, also across
an agent restart (the broker re-sends what was not acknowledged; the server may re-send
too). A job id is recorded here *before* the job starts and before ``event.accepted`` is
published, so a second delivery is recognised and dropped, never run again.

File format: JSON ``{"version": 1, "jobs": {job_id: {"kind", "state", "accepted_at",
"ended_at"}}}``, mode 0600. ``state`` is ``running`` or a final result status.

Write order: the whole file is written to a temp file beside it, fsynced, renamed over
``jobs.json``, then the directory is fsynced; a crash leaves the old or the new file, never
a torn one. Writes run in a worker thread and are serialised by a lock, which a cancelled
caller keeps until its write is done.

After a restart, jobs still ``running`` in the file were interrupted by the crash: the
daemon reports them failed (:meth:`JobLedger.interrupted`).

Records of finished jobs are dropped after ``RETENTION`` (commands expire long before
that, so an older duplicate would be refused as expired anyway), and the file keeps at most
``MAX_RECORDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

__all__ = ["JOBS_FILE", "JobLedger", "JobRecord"]

log = structlog.get_logger()

JOBS_FILE: Final = "jobs.json"
RETENTION: Final = 30 * 24 * 3600.0
MAX_RECORDS: Final = 10_000
_VERSION: Final = 1


@dataclass(slots=True)
class JobRecord:
    kind: str
    state: str
    accepted_at: float
    ended_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "state": self.state,
            "accepted_at": self.accepted_at,
            "ended_at": self.ended_at,
        }

    @classmethod
    def from_json(cls, doc: Any) -> JobRecord:
        if not isinstance(doc, dict):
            raise ValueError("job record is not an object")
        ended = doc.get("ended_at")
        return cls(
            kind=str(doc["kind"]),
            state=str(doc["state"]),
            accepted_at=float(doc["accepted_at"]),
            ended_at=None if ended is None else float(ended),
        )


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class JobLedger:
    """Job ids this agent accepted, persisted in ``state_dir/jobs.json``."""

    def __init__(self, path: Path, records: dict[str, JobRecord]) -> None:
        self.path = path
        self._records = records
        self._lock = asyncio.Lock()

    @classmethod
    def load(cls, state_dir: Path) -> JobLedger:
        """Read the ledger (blocking; call before the loop runs or in a thread).

        An unreadable file is moved aside to ``jobs.json.corrupt-<time>`` and logged: the
        agent keeps working, at the risk of running a re-delivered old job once more.
        """
        path = state_dir / JOBS_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path, {})
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("version") != _VERSION:
                raise ValueError(f"unknown format {str(doc)[:60]!r}")
            jobs = doc.get("jobs")
            if not isinstance(jobs, dict):
                raise ValueError("'jobs' is not an object")
            records = {str(k): JobRecord.from_json(v) for k, v in jobs.items()}
        except (ValueError, KeyError, TypeError) as err:
            aside = path.with_name(f"{JOBS_FILE}.corrupt-{int(time.time())}")
            os.replace(path, aside)
            log.error("job_ledger_corrupt", path=str(path), moved_to=str(aside), error=str(err))
            return cls(path, {})
        return cls(path, records)

    def get(self, job_id: str) -> JobRecord | None:
        return self._records.get(job_id)

    def interrupted(self) -> list[tuple[str, JobRecord]]:
        """Jobs recorded as running: the previous agent process died during them."""
        return [(jid, rec) for jid, rec in self._records.items() if rec.state == "running"]

    async def accept(self, job_id: str, kind: str, now: float) -> bool:
        """Record ``job_id`` as running; False (and nothing written) when already known."""
        async with self._lock:
            if job_id in self._records:
                return False
            self._records[job_id] = JobRecord(kind=kind, state="running", accepted_at=now)
            await self._save(now)
            return True

    async def finish(self, job_id: str, state: str, now: float) -> None:
        async with self._lock:
            rec = self._records.get(job_id)
            if rec is None:
                return
            rec.state = state
            rec.ended_at = now
            await self._save(now)

    async def _save(self, now: float) -> None:
        self._prune(now)
        doc = {
            "version": _VERSION,
            "jobs": {jid: rec.to_json() for jid, rec in self._records.items()},
        }
        data = json.dumps(doc, sort_keys=True, indent=1).encode()
        write = asyncio.ensure_future(asyncio.to_thread(_write_atomic, self.path, data))
        try:
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                # The thread goes on regardless: hold the lock until it is done, so two
                # writes never race, then let the cancellation through.
                await write
                raise
        except OSError as err:
            raise OSError(err.errno, f"cannot write job ledger {self.path}: {err}") from err

    def _prune(self, now: float) -> None:
        old = [
            jid
            for jid, rec in self._records.items()
            if rec.ended_at is not None and now - rec.ended_at > RETENTION
        ]
        for jid in old:
            del self._records[jid]
        excess = len(self._records) - MAX_RECORDS
        if excess > 0:
            finished = sorted(
                (rec.accepted_at, jid)
                for jid, rec in self._records.items()
                if rec.state != "running"
            )
            for _, jid in finished[:excess]:
                del self._records[jid]
