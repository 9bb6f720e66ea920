"""Stopping a restore: cancellation and fatal source errors leave no temp files."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from agent.restore import TMP_PREFIX, RestoreError, RestoreOptions, RestoreReport, restore
from storage_pool import ChunkId, Entry, EntryType, ManifestError, StoragePool, chunk_id_of
from storage_pool.ingest import ingest_tree
from tests.support.tree_compare import files_named
from tests.unit.agent.chunk_source import MemoryChunkFetcher, PoolChunkFetcher, aiter_of
from tests.unit.pool.sample_data import KiB, MiB, random_bytes, write_file


def half_written(target: Path) -> bool:
    temps = files_named(target, TMP_PREFIX)
    return bool(temps) and (target / os.fsdecode(temps[0])).stat().st_size > 0


async def until(check: Callable[[], bool], task: asyncio.Task[RestoreReport]) -> None:
    while not check():
        assert not task.done(), task.result()
        await asyncio.sleep(0.01)


class StallingFetcher(PoolChunkFetcher):
    """Delivers the first `allow` chunks, then stalls like a hung connection."""

    def __init__(self, pool: StoragePool, allow: int) -> None:
        super().__init__(pool)
        self.allow = allow
        self.delivered = 0

    async def fetch(self, ids: Sequence[ChunkId]) -> AsyncIterator[tuple[ChunkId, bytes]]:
        for cid in ids:
            if self.delivered >= self.allow:
                await asyncio.Event().wait()  # never set: only cancellation ends this
            self.delivered += 1
            yield cid, await self.pool.get_chunk(cid)


async def test_cancelled_restore_leaves_no_temp_files(tmp_path: Path, pool: StoragePool) -> None:
    """Guards against `.stockade-tmp-*` litter: a restore cancelled while a file is half
    written removes that file's temp file; files finished before it stay in place."""
    source, target = tmp_path / "source", tmp_path / "target"
    write_file(source / "a_first", random_bytes(10 * KiB, seed=1))
    write_file(source / "b_second", random_bytes(20 * KiB, seed=2))
    write_file(source / "c_big", random_bytes(6 * MiB, seed=3))
    rp, _ = await ingest_tree(pool, "host:/tree", source)
    fetcher = StallingFetcher(pool, allow=3)  # both small files and c_big's first chunk
    task = asyncio.create_task(
        restore(pool.iter_entries(rp), fetcher, RestoreOptions(target=target))
    )
    # c_big's first chunk reaches its temp file; then the source stalls. Files are
    # written by worker threads, so b_second may land after c_big's first bytes: wait
    # for both small files too (under load the rename came second once).
    await until(
        lambda: (
            half_written(target)
            and (target / "a_first").exists()
            and (target / "b_second").exists()
        ),
        task,
    )

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert files_named(target, TMP_PREFIX) == []
    assert sorted(p.name for p in target.iterdir()) == ["a_first", "b_second"]
    assert (target / "b_second").read_bytes() == (source / "b_second").read_bytes()


class BrokenFetcher:
    async def fetch(self, ids: Sequence[ChunkId]) -> AsyncIterator[tuple[ChunkId, bytes]]:
        raise ConnectionResetError("backup server went away")
        yield  # an async generator


async def test_fatal_fetch_error_stops_with_a_report(tmp_path: Path) -> None:
    """A chunk source failing with anything but ChunkUnavailableError ends the restore
    with RestoreError carrying what was done; the temp file is gone."""
    data = b"content"
    entries = [
        Entry(path=b"d", type=EntryType.DIR, mode=0o755),
        Entry(
            path=b"d/f",
            type=EntryType.FILE,
            size=len(data),
            chunk_ids=(chunk_id_of(data),),
            chunk_sizes=(len(data),),
        ),
    ]
    with pytest.raises(RestoreError, match="backup server went away") as info:
        await restore(aiter_of(entries), BrokenFetcher(), RestoreOptions(target=tmp_path / "t"))
    assert isinstance(info.value.__cause__, ConnectionResetError)
    assert info.value.report is not None and info.value.report.dirs == 1
    assert files_named(tmp_path, TMP_PREFIX) == []


async def test_broken_entry_stream_stops_with_a_report(tmp_path: Path) -> None:
    """A manifest that fails to decode mid-way: what came before is restored, then the
    restore fails naming the cause."""

    async def entries() -> AsyncIterator[Entry]:
        yield Entry(path=b"early", type=EntryType.DIR, mode=0o700)
        raise ManifestError("manifest of recovery point x", "entry 1: truncated")

    with pytest.raises(RestoreError, match="truncated") as info:
        await restore(entries(), MemoryChunkFetcher(), RestoreOptions(target=tmp_path / "t"))
    assert info.value.report is not None and info.value.report.dirs == 1
    assert (tmp_path / "t" / "early").is_dir()


async def test_bad_options_are_refused_before_touching_disk(tmp_path: Path) -> None:
    target = tmp_path / "t"
    for options in (
        RestoreOptions(target=target, items=[b"a/../b"]),
        RestoreOptions(target=target, conflict="merge"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ValueError, match=r"item|conflict"):
            await restore(aiter_of([]), MemoryChunkFetcher(), options)
    assert not target.exists()
