"""One scratch pack being written on its own thread while the event loop moves on.

The online uploader hands a pack its blobs batch by batch and asks for `finish`
without waiting for the writes: sealing (AES-GCM), hashing (the pack's SHA-256) and
writing run on the pack's single worker thread, in the order they were asked for,
while the loop reads the next chunks and starts the next pack. Two packs (one being
filled, one being finished) thus seal on two cores at once.

A step runs only if every step before it ran and succeeded: after a failure or a
cancelled step the later ones raise the first error instead of writing, so a pack
never silently lacks a batch its caller counted as packed. `discard` (blocking) waits
for the thread, then removes the pack's ``.partial`` or ``.pack`` file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from storage_pool.ids import ChunkId
from storage_pool.vault.pack import FinishedPack, PackWriter

T = TypeVar("T")


class PackStepSkippedError(RuntimeError):
    """A step of a pack build ran after an earlier step was cancelled before it ran."""

    def __init__(self, name: str) -> None:
        super().__init__(f"pack {name}: an earlier write was cancelled; the pack is discarded")


class PackBuild:
    """The writer of one pack, fed from the event loop, run on one worker thread."""

    def __init__(self, name: str, make_writer: Callable[[], PackWriter]) -> None:
        self.name = name
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="vault-pack")
        self._writer: PackWriter | None = None
        self._error: BaseException | None = None
        self._submitted = 0
        self._ran = 0
        self._finishing = False
        self._finished: FinishedPack | None = None

        def open_writer() -> None:
            self._writer = make_writer()

        self._step(open_writer)

    def _step(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        index = self._submitted
        self._submitted += 1

        def run() -> T:
            if self._error is None and self._ran != index:
                self._error = PackStepSkippedError(self.name)
            if self._error is not None:
                raise self._error
            try:
                out = fn()
            except BaseException as err:
                self._error = err
                raise
            self._ran += 1
            return out

        future = asyncio.get_running_loop().run_in_executor(self._thread, run)
        # A step's error also fails every later step (finish included), where the caller
        # sees it: no step's future needs to be awaited for its error to count.
        future.add_done_callback(_retrieve)
        return future

    def _require_writer(self) -> PackWriter:
        if self._writer is None:  # only reachable if open_writer failed: _error is set
            raise RuntimeError(f"pack {self.name} has no writer")
        return self._writer

    def add_many(self, items: Sequence[tuple[ChunkId, bytes]]) -> asyncio.Future[int]:
        """Seal and append `items` after the steps before; resolves to how many."""
        if self._finishing:
            raise ValueError(f"pack {self.name} is already finishing")
        return self._step(lambda: len(self._require_writer().add_many(items)))

    def finish(self) -> asyncio.Future[FinishedPack]:
        """Seal the trailer once every batch is written; no step may follow."""
        if self._finishing:
            raise ValueError(f"pack {self.name} is already finishing")
        self._finishing = True

        def finish() -> FinishedPack:
            self._finished = self._require_writer().finish()
            return self._finished

        return self._step(finish)

    def discard(self) -> None:
        """Blocking: stop the steps not started, wait for the running one, remove the file."""
        self._thread.shutdown(wait=True, cancel_futures=True)
        if self._writer is not None:
            self._writer.abort()  # removes the .partial; a no-op once finished
            self._writer.path.unlink(missing_ok=True)


def _retrieve(future: asyncio.Future[T]) -> None:
    if not future.cancelled():
        future.exception()
