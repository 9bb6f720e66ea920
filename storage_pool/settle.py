"""Steps that run to their end once started, even when the task awaiting them is cancelled.

A thread cannot be interrupted, and a step that makes one thing visible in two places (a
pool record, then its catalog row) must not stop between the two: a Stop-Job, a
cloud-policy stop, a server stop or a client hanging up cancels the task awaiting it.

Deleting a scratch pack waits for the pack's worker thread, and a thread cannot be
interrupted. A task cancelled while it waits would go on (release the pack's scratch
bytes, report the job over) with the file still on disk and the thread still running:
the scratch area must be empty after every job, failed and cancelled ones included.
`settle` waits for the step through any number of cancellations, then raises the
first of them, so the caller still unwinds as cancelled, only later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["settle"]

T = TypeVar("T")


async def settle(step: Coroutine[Any, Any, T], *, name: str) -> T:
    """Run `step` in its own task named `name` and wait for it to end.

    A cancellation of the caller does not reach `step`: it is held until `step` ended,
    then raised (with the step's own error, if any, as its cause).
    """
    task = asyncio.create_task(step, name=name)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            # `wait` never cancels `task`, and returns rather than raising its error.
            await asyncio.wait({task})
        except asyncio.CancelledError as cancel:
            cancelled = cancelled or cancel
    if cancelled is not None:
        if not task.cancelled() and (failure := task.exception()) is not None:
            raise cancelled from failure
        raise cancelled
    return task.result()
