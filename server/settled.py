"""Steps that run to their end once started, even when the task awaiting them is cancelled.

A step that makes one thing visible in two places (a pool record, then its catalog row)
must not stop between the two: a Stop-Job, a cloud-policy stop, a server stop or a client
that hangs up cancels the task awaiting it. `settled` lets the step finish first and then
re-raises the cancellation, so the caller still unwinds as cancelled, only later.

A cancelled `run_in_executor` future does not stop its thread: without this, the thread
could write a record after the caller had already given up on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

__all__ = ["settled"]

log = structlog.get_logger()

T = TypeVar("T")


async def settled(step: Coroutine[Any, Any, T], *, name: str) -> T:
    """Await `step` in its own task named `name`; if the caller is cancelled meanwhile,
    wait for the step to end, then raise the cancellation (the step's own error, if any,
    is logged: the cancellation is what the caller must see)."""
    task = asyncio.create_task(step, name=name)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait({task})
        if not task.cancelled() and (err := task.exception()) is not None:
            log.error("settled_step_failed", step=name, error=f"{type(err).__name__}: {err}")
        raise
