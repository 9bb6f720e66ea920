"""The server's background loops: do one round, survive its errors, wait, repeat.

Every periodic part (job engine, schedulers, runners, alert rules) runs `repeat` instead
of writing the loop again: one round's exception is logged under the caller's event name
and never ends the loop; cancellation does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import structlog

__all__ = ["repeat"]

log = structlog.get_logger()


async def repeat(
    step: Callable[[], Awaitable[Any]],
    *,
    failed_event: str,
    interval: Callable[[], float],
    wake: asyncio.Event | None = None,
) -> NoReturn:
    """Run `step` forever, `interval()` seconds apart (read each round, so a SIGHUP
    applies); setting `wake` starts the next round at once."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(failed_event)
        if wake is None:
            await asyncio.sleep(interval())
            continue
        wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval()):
                await wake.wait()
