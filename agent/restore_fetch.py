"""Chunk read-ahead for a restore: the network runs ahead of the disk, within a budget.

The planner `want()`s chunk ids in exactly the order the writer will consume them; the
`run()` task cuts them into batches (at most BATCH_CHUNKS chunks / BATCH_BYTES bytes,
duplicates in a batch asked for once), fetches a batch whenever the bytes fetched but not
yet written stay under READ_AHEAD_BYTES, and queues each chunk, in order, as soon as it
arrives (the writer starts on a batch's first chunk while the rest is on the wire). The writer
takes them with `next()` and gives their budget back with `release()` once written.

No deadlock: the writer waits only when the next chunk is not there, and then every
earlier chunk was released, so the budget is free; the fetch task waits for ids only when
every wanted id is fetched.

A chunk the fetcher reports unavailable (`ChunkUnavailableError`), or whose length
differs from the manifest's, is delivered as a reason string: only the files using it
fail. Any other fetcher error is kept and raised to the writer as `RestoreError`.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from typing import cast

import structlog

from agent.restore_types import ChunkFetcher, ChunkUnavailableError, RestoreError
from storage_pool import ChunkId

log = structlog.get_logger()

BATCH_CHUNKS = 64
BATCH_BYTES = 16 * 1024 * 1024
READ_AHEAD_BYTES = 64 * 1024 * 1024

Delivered = tuple[ChunkId, bytes | str, int]  # (id, plaintext or why not, budget charged)


class ChunkPipeline:
    def __init__(
        self,
        fetcher: ChunkFetcher,
        *,
        batch_chunks: int = BATCH_CHUNKS,
        batch_bytes: int = BATCH_BYTES,
        read_ahead: int = READ_AHEAD_BYTES,
    ) -> None:
        self._fetcher = fetcher
        self._batch_chunks = batch_chunks
        self._batch_bytes = batch_bytes
        self._cap = read_ahead
        self._wanted: collections.deque[tuple[ChunkId, int]] = collections.deque()
        self._ready: collections.deque[Delivered] = collections.deque()
        self._no_more = False
        self._used = 0
        self._error: BaseException | None = None
        self._changed = asyncio.Condition()

    @property
    def buffered(self) -> int:
        """Bytes fetched (or being fetched) and not yet released by the writer."""
        return self._used

    async def want(self, ids: Sequence[tuple[ChunkId, int]]) -> None:
        """Queue (id, expected size) pairs, in the order the writer will take them."""
        if ids:
            async with self._changed:
                self._wanted.extend(ids)
                self._changed.notify_all()

    async def no_more(self) -> None:
        async with self._changed:
            self._no_more = True
            self._changed.notify_all()

    async def next(self) -> Delivered:
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._ready) or self._error is not None)
            if self._ready:
                return self._ready.popleft()
        raise RestoreError(f"fetching chunks failed: {self._error}") from self._error

    async def release(self, charged: int) -> None:
        async with self._changed:
            self._used -= charged
            self._changed.notify_all()

    async def run(self) -> None:
        """The fetch task: returns when every wanted chunk is queued and no more come."""
        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(lambda: bool(self._wanted) or self._no_more)
                    if not self._wanted:
                        return
                    batch = _Batch(self._take_batch(), self._cap)
                    need = sum(batch.charges)
                    await self._changed.wait_for(functools.partial(self._fits, need))
                    self._used += need
                await self._fetch_batch(batch)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # task boundary: the writer raises it as RestoreError
            log.warning("restore_fetch_failed", error=str(err))
            async with self._changed:
                self._error = err
                self._changed.notify_all()

    async def _deliver(self, batch: _Batch) -> None:
        ready = batch.ready()
        if ready:
            async with self._changed:
                self._ready.extend(ready)
                self._changed.notify_all()

    def _fits(self, need: int) -> bool:
        return self._used == 0 or self._used + need <= self._cap

    def _take_batch(self) -> list[tuple[ChunkId, int]]:
        batch = [self._wanted.popleft()]
        total = batch[0][1]
        while self._wanted and len(batch) < self._batch_chunks:
            size = self._wanted[0][1]
            if total + size > self._batch_bytes:
                break
            batch.append(self._wanted.popleft())
            total += size
        return batch

    async def _fetch_batch(self, batch: _Batch) -> None:
        """Fetch one batch, handing each chunk on as soon as it and all before it came."""
        unique = list(dict.fromkeys(cid for cid, _ in batch.items))
        try:
            await self._stream(unique, batch)
        except ChunkUnavailableError as err:
            if len(unique) == 1:
                batch.got[unique[0]] = err.reason
            else:
                # Find the culprits one by one so only their files fail.
                for cid in unique:
                    if cid not in batch.got:
                        try:
                            await self._stream([cid], batch)
                        except ChunkUnavailableError as one:
                            batch.got[cid] = one.reason
        for cid in unique:
            batch.got.setdefault(cid, f"chunk {cid.hex()} was not delivered by the source")
        await self._deliver(batch)

    async def _stream(self, ids: list[ChunkId], batch: _Batch) -> None:
        asked = set(ids)
        stream: AsyncIterator[tuple[ChunkId, bytes]] = self._fetcher.fetch(ids)
        if hasattr(stream, "aclose"):  # an async generator: close it even when cancelled
            gen = cast(AsyncGenerator[tuple[ChunkId, bytes], None], stream)
            async with aclosing(gen) as closing:
                await self._collect(closing, asked, batch)
        else:
            await self._collect(stream, asked, batch)

    async def _collect(
        self, stream: AsyncIterator[tuple[ChunkId, bytes]], asked: set[ChunkId], batch: _Batch
    ) -> None:
        async for cid, data in stream:
            if cid not in asked:
                raise RestoreError(
                    f"chunk source sent chunk {bytes(cid).hex()}, which was not asked for"
                )
            batch.got[cid] = data
            await self._deliver(batch)


class _Batch:
    """One request's chunks in writer order; `ready()` hands on the leading ones that
    have arrived (a duplicate id arrives once and fills every place it holds)."""

    def __init__(self, items: list[tuple[ChunkId, int]], cap: int) -> None:
        self.items = items
        self.charges = [min(size, cap) for _, size in items]
        self.got: dict[ChunkId, bytes | str] = {}
        self._pos = 0

    def ready(self) -> list[Delivered]:
        out: list[Delivered] = []
        while self._pos < len(self.items) and self.items[self._pos][0] in self.got:
            cid, size = self.items[self._pos]
            data = self.got[cid]
            if isinstance(data, bytes) and len(data) != size:
                data = f"chunk {cid.hex()} holds {len(data)} bytes, the manifest says {size}"
            out.append((cid, data, self.charges[self._pos]))
            self._pos += 1
        return out
