"""A real `PackWriter` whose worker thread stops at one step until the test lets it go.

Fault injection for the races between a pack's thread and the loop that aborts the
job: the test knows the thread is parked at `finish` (before the rename to ``.pack``)
or at `abort` (before the files are deleted) while it cancels the job.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from storage_pool.vault.pack import FinishedPack, PackWriter
from storage_pool.vault.scratch import ScratchBudget, scratch_usage

T = TypeVar("T")

# More loop turns than any chain of callbacks the code under test runs without waiting
# on a thread or a socket: a task that is not done after them is waiting on one.
LOOP_TURNS = 200


class Hold:
    """Where the first writer made through `writer_class` parks its thread.

    `reached` is set when the thread gets there; it goes on once `go` is set. Leaving
    the `with` block sets both, so a failed test never leaves a thread parked.
    """

    def __init__(self, at: Literal["finish", "abort"]) -> None:
        self.at = at
        self.reached = threading.Event()
        self.go = threading.Event()
        self._armed = True

    def __enter__(self) -> Hold:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.go.set()
        self.reached.set()

    def _stop_at(self, step: str, held: bool) -> None:
        if held and step == self.at:
            self.reached.set()
            self.go.wait()

    def writer_class(self) -> type[PackWriter]:
        hold = self

        class HeldWriter(PackWriter):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, **kwargs)  # type: ignore[arg-type]
                self._held, hold._armed = hold._armed, False

            def finish(self) -> FinishedPack:
                hold._stop_at("finish", self._held)
                return super().finish()

            def abort(self) -> None:
                hold._stop_at("abort", self._held)
                super().abort()

        return HeldWriter

    async def reached_while(self, job: asyncio.Future[T]) -> None:
        """Wait until the thread is parked; fail with `job`'s error if it ends first."""
        parked = asyncio.ensure_future(asyncio.to_thread(self.reached.wait))
        either: set[asyncio.Future[Any]] = {job, parked}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not parked.done():
            self.reached.set()
            await parked
            job.result()
            raise AssertionError(f"the job ended before a pack thread reached {self.at}")


async def loop_turns(count: int = LOOP_TURNS) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


class CheckedBudget(ScratchBudget):
    """A real budget that, at each release, also checks what is left on disk fits in it.

    Bytes released while their file is still in scratch (the race this guards) show up
    as an overrun: (bytes on disk, bytes still reserved).
    """

    def __init__(self, limit: int, scratch: Path) -> None:
        super().__init__(limit)
        self.scratch = scratch
        self.overruns: list[tuple[int, int]] = []

    def release(self, size: int) -> None:
        super().release(size)
        on_disk = scratch_usage(self.scratch)
        if on_disk > self.in_use:
            self.overruns.append((on_disk, self.in_use))
