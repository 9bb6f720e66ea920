"""Stop-Job for jobs the server runs itself (no agent): one canceller per job kind.

`JobManager.cancel` hands every server job to its ``server_cancel``; the daemon sets that to
`server_cancel_by_kind` over the runners that can stop their jobs (online backup, verify).
A kind without a canceller (prune, gc: short, and stopped with the server) is refused with
a message naming it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from server.catalog import JobKind, JobRow
from server.catalog_errors import InvalidStateError

__all__ = ["ServerCancel", "server_cancel_by_kind"]

ServerCancel = Callable[[JobRow], Awaitable[JobRow]]


def server_cancel_by_kind(cancellers: Mapping[JobKind, ServerCancel]) -> ServerCancel:
    """One `ServerCancel` that dispatches on the job's kind."""
    table = dict(cancellers)

    async def cancel(job: JobRow) -> JobRow:
        stop = table.get(job.kind)
        if stop is None:
            raise InvalidStateError(
                "job", job.id, f"{job.kind} jobs run on the server and cannot be stopped"
            )
        return await stop(job)

    return cancel
