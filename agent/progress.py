"""Throttled ``event.progress`` of one job: worker threads update, the loop publishes.

Walkers and restorers report progress as often as they like, from any thread:
:meth:`ProgressReporter.update` only stores the latest counters (a few attribute writes,
atomic under the GIL). A task on the event loop publishes the latest snapshot at most
every ``interval`` (0.5 s, so about 2 messages per second) and only when it changed, with
``rate_bps`` computed over the interval. Progress is best effort: it is dropped while
the broker is away (the final result is not).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

__all__ = ["PROGRESS_INTERVAL", "ProgressReporter"]

PROGRESS_INTERVAL: Final = 0.5

Publish = Callable[[Mapping[str, Any]], Awaitable[None]]


class ProgressReporter:
    def __init__(self, publish: Publish, *, interval: float = PROGRESS_INTERVAL) -> None:
        self._publish = publish
        self._interval = interval
        self.files = 0
        self.bytes = 0
        self.current_path = ""
        self._task: asyncio.Task[None] | None = None

    def update(self, *, files: int, nbytes: int, current_path: bytes | str = "") -> None:
        """Record the latest counters (thread-safe, cheap)."""
        self.files = files
        self.bytes = nbytes
        self.current_path = (
            os.fsdecode(current_path) if isinstance(current_path, bytes) else current_path
        )

    def start(self, name: str) -> None:
        self._task = asyncio.create_task(self._loop(), name=name)

    async def stop(self) -> None:
        """Stop publishing (the final counters go into the job's result instead)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        last: tuple[int, int, str] | None = None
        last_bytes = 0
        last_time = time.monotonic()
        while True:
            await asyncio.sleep(self._interval)
            snap = (self.files, self.bytes, self.current_path)
            if snap == last:
                continue
            now = time.monotonic()
            rate = (snap[1] - last_bytes) / max(now - last_time, 1e-3)
            last, last_bytes, last_time = snap, snap[1], now
            await self._publish(
                {
                    "files": snap[0],
                    "bytes": snap[1],
                    "rate_bps": max(int(rate), 0),
                    "current_path": snap[2],
                }
            )
