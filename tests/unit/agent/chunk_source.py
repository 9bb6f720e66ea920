"""`ChunkFetcher`s for tests (over a real StoragePool, or in memory) and helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence

from agent.restore import ChunkUnavailableError
from storage_pool import (
    ChunkId,
    ChunkNotFoundError,
    Entry,
    IntegrityError,
    StoragePool,
    chunk_id_of,
)


class PoolChunkFetcher:
    """Reads chunks from a pool (each verified by the pool), counting what was asked."""

    def __init__(self, pool: StoragePool) -> None:
        self.pool = pool
        self.requests: list[list[ChunkId]] = []
        self.bytes_fetched = 0

    async def fetch(self, ids: Sequence[ChunkId]) -> AsyncIterator[tuple[ChunkId, bytes]]:
        self.requests.append(list(ids))
        for cid in ids:
            try:
                data = await self.pool.get_chunk(cid)
            except (ChunkNotFoundError, IntegrityError) as err:
                raise ChunkUnavailableError([cid], str(err)) from err
            self.bytes_fetched += len(data)
            yield cid, data


async def aiter_of(entries: Iterable[Entry]) -> AsyncIterator[Entry]:
    for entry in entries:
        yield entry


class MemoryChunkFetcher:
    """Chunks held in memory, verified like a network fetcher verifies them. For tests
    whose subject is the manifest, not the chunk store (no pool to create)."""

    def __init__(self, datas: Iterable[bytes] = ()) -> None:
        self.chunks = {chunk_id_of(d): d for d in datas}

    async def fetch(self, ids: Sequence[ChunkId]) -> AsyncIterator[tuple[ChunkId, bytes]]:
        for cid in ids:
            data = self.chunks.get(cid)
            if data is None or chunk_id_of(data) != cid:
                raise ChunkUnavailableError([cid], f"chunk {cid.hex()} is missing")
            yield cid, data
