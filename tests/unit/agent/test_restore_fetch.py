"""The chunk read-ahead: batches, duplicates, unavailable chunks, the budget."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from agent.restore import RestoreOptions, restore
from agent.restore_fetch import BATCH_CHUNKS, ChunkPipeline
from storage_pool import ChunkId, Entry, EntryType, chunk_id_of
from tests.unit.agent.chunk_source import MemoryChunkFetcher, aiter_of


class RecordingFetcher(MemoryChunkFetcher):
    def __init__(self, datas: Sequence[bytes]) -> None:
        super().__init__(datas)
        self.requests: list[list[ChunkId]] = []

    async def fetch(self, ids: Sequence[ChunkId]) -> AsyncIterator[tuple[ChunkId, bytes]]:
        self.requests.append(list(ids))
        async for item in super().fetch(ids):
            yield item


def file_of(path: bytes, *pieces: bytes) -> Entry:
    return Entry(
        path=path,
        type=EntryType.FILE,
        mode=0o644,
        size=sum(len(p) for p in pieces),
        chunk_ids=tuple(chunk_id_of(p) for p in pieces),
        chunk_sizes=tuple(len(p) for p in pieces),
    )


async def test_batches_are_bounded_and_ask_for_a_chunk_once(tmp_path: Path) -> None:
    datas = [b"%05d" % i * 200 for i in range(150)]
    entries = [file_of(b"f%03d" % i, datas[i], datas[0]) for i in range(150)]
    fetcher = RecordingFetcher(datas)
    report = await restore(aiter_of(entries), fetcher, RestoreOptions(target=tmp_path / "t"))
    assert (report.files, report.warnings) == (150, [])
    assert all(len(r) <= BATCH_CHUNKS and len(set(r)) == len(r) for r in fetcher.requests)
    assert {cid for r in fetcher.requests for cid in r} == {chunk_id_of(d) for d in datas}
    assert (tmp_path / "t" / "f149").read_bytes() == datas[149] + datas[0]


async def test_an_unavailable_chunk_fails_only_its_file(tmp_path: Path) -> None:
    """The batch is asked for again chunk by chunk, so the culprit is found and only the
    file that needs it fails (a counted warning, not a crash)."""
    datas = [b"chunk %d" % i for i in range(6)]
    entries = [file_of(b"f%d" % i, d) for i, d in enumerate(datas)]
    fetcher = RecordingFetcher([d for d in datas if d != datas[3]])
    report = await restore(aiter_of(entries), fetcher, RestoreOptions(target=tmp_path / "t"))
    assert report.files == 5
    assert [(w.path, w.refused) for w in report.warnings] == [(b"f3", False)]
    assert "missing" in report.warnings[0].message
    assert [chunk_id_of(datas[3])] in fetcher.requests
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "f0",
        "f1",
        "f2",
        "f4",
        "f5",
    ]


async def test_read_ahead_stays_within_its_budget() -> None:
    """The fetch task asks for more only while fetched-but-unwritten bytes fit the
    budget, however slowly the writer takes them."""
    datas = [bytes([i]) * 1000 for i in range(40)]
    seen: list[int] = []

    class Watching(MemoryChunkFetcher):
        async def fetch(self, ids: Sequence[ChunkId]) -> AsyncIterator[tuple[ChunkId, bytes]]:
            seen.append(pipeline.buffered)
            async for item in super().fetch(ids):
                yield item

    pipeline = ChunkPipeline(Watching(datas), batch_chunks=2, read_ahead=3000)
    task = asyncio.create_task(pipeline.run())
    await pipeline.want([(chunk_id_of(d), len(d)) for d in datas])
    await pipeline.no_more()
    for data in datas:
        cid, got, charge = await pipeline.next()
        assert (cid, got) == (chunk_id_of(data), data)
        for _ in range(3):
            await asyncio.sleep(0)  # let the fetch task run ahead as far as it may
        await pipeline.release(charge)
    await task
    assert len(seen) == 20
    assert max(seen) <= 3000
