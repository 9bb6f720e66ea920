"""Orders a backup's recovery-point commit with its job's final state.

Two rules: nothing is half visible (a pool record without its catalog row, or the
reverse), and a backup job that ends failed or cancelled leaves no RP.

One `CommitGuard` per server, shared by the job engine (server/jobs.py, `JobManager.commits`)
and the data plane (server/data_plane.py). It holds one lock per job. Under that lock:

- the data plane's commit (step by step, in this order): read the job from the catalog
  (not running: the commit is refused and its session aborted, nothing is written); the
  pool commit (manifest tail, every chunk durable, then the record: the pool's commit
  point); the catalog row; `committed(job, rp)`. Once started these steps run to their end
  even if the request is cancelled (storage_pool/settle.py);
- every final state of a backup job: `JobManager._finish` (agent results, Stop-Job, the
  cloud policy, agent restarts and timeouts) and the data plane's no-space failure.

So a final state written before the commit takes the lock makes the commit refuse; one
asked for while the commit runs waits for it; one asked for after the commit finds the RP
(`ending` yields it). Then the job cannot claim "failed, no RP": a failure or a stop that
comes after the commit ends it ``succeeded_with_warnings``, its result naming the RP,
which is kept, and its error saying what came too late (`kept_after_commit`).

The one case left: a crash between the pool record and the catalog row. The next start
fails the job ("the server restarted while it ran", retryable) and `rebuild_from_pool`
re-adds the row, so that RP is listed beside a failed job; it is complete and valid.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from storage_pool import RecoveryPoint

__all__ = ["CommitGuard", "KeptRecoveryPoint", "kept_after_commit"]


class CommitGuard:
    """Per-job locks and the RPs committed for still-running jobs. One event loop."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}
        self._committed: dict[str, RecoveryPoint] = {}

    @contextlib.asynccontextmanager
    async def ending(self, job_id: str) -> AsyncIterator[RecoveryPoint | None]:
        """Hold job `job_id`'s lock; yields the RP already committed for it, if any."""
        lock = self._locks.setdefault(job_id, asyncio.Lock())
        self._users[job_id] = self._users.get(job_id, 0) + 1
        try:
            async with lock:
                yield self._committed.get(job_id)
        finally:
            self._users[job_id] -= 1
            if not self._users[job_id]:
                del self._users[job_id]
                del self._locks[job_id]

    def waiting(self, job_id: str) -> int:
        """How many callers wait for job `job_id`'s lock (not counting its holder)."""
        lock = self._locks.get(job_id)
        users = self._users.get(job_id, 0)
        return users - 1 if lock is not None and lock.locked() else users

    def committed(self, job_id: str, rp: RecoveryPoint) -> None:
        """The commit of job `job_id` made `rp` visible (call under `ending`)."""
        self._committed[job_id] = rp

    def forget(self, job_id: str) -> None:
        """Job `job_id` reached its final state: nothing more to order."""
        self._committed.pop(job_id, None)


@dataclass(frozen=True, slots=True)
class KeptRecoveryPoint:
    """The final state a failure or stop becomes when the job's RP is already committed."""

    state: str
    error: str
    result: dict[str, Any]
    warnings: int


def kept_after_commit(
    rp: RecoveryPoint,
    state: str,
    error: str | None,
    result: dict[str, Any] | None,
    warnings: int | None,
) -> KeptRecoveryPoint:
    """`state` (failed or cancelled, with `error`) asked for after `rp` was committed."""
    why = error or state
    doc = dict(result or {})
    doc["rp_id"] = rp.id
    doc.setdefault("stats", {"files": rp.files, "logical_bytes": rp.logical_bytes})
    doc["stopped_after_commit"] = why
    return KeptRecoveryPoint(
        state="succeeded_with_warnings",
        error=f"{why} (after recovery point {rp.id} was committed: the recovery point is kept)",
        result=doc,
        warnings=max(1, warnings or 0),
    )
