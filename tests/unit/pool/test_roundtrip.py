"""Back up, list, read back, reopen, dedup, delete and collect, through the public API."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage_pool import SAFETY_NONE, Entry, EntryType, StoragePool, chunk_id_of
from storage_pool.pool import Durability
from tests.unit.pool.file_backup import backup_files, entries_of, read_back
from tests.unit.pool.pool_opener import PoolOpener
from tests.unit.pool.sample_data import KiB, MiB, random_bytes, text_bytes


def sample_files() -> dict[bytes, bytes]:
    return {
        b"big.bin": random_bytes(20 * 1000 * 1000, seed=20),
        b"docs/empty": b"",
        b"docs/notes.txt": text_bytes(3 * MiB, seed=21),
        b"docs/sub/one-byte": b"x",
        b"docs/sub/small": random_bytes(10 * KiB, seed=22),
        b"zeros": bytes(2 * MiB),
    }


def chunk_files_on_disk(root: Path) -> list[Path]:
    return [p for p in (root / "chunks").glob("*/*") if p.is_file()]


@pytest.mark.parametrize("durability", list(Durability))
async def test_round_trip_is_byte_identical_and_survives_reopen(
    pools: PoolOpener, durability: Durability
) -> None:
    """Guards the core promise: what a session stores and commits is listed and read back
    byte for byte, with the entries exactly as added, before and after the pool is closed
    and opened again, at either durability level."""
    files = sample_files()
    pool = await pools.create(durability=durability)
    rp, stats, added = await backup_files(pool, "web01:/srv", files)

    assert rp.data_source == "web01:/srv"
    assert rp.entries == len(added)
    assert rp.files == len(files)
    assert rp.logical_bytes == sum(len(d) for d in files.values())
    assert stats.put.new_chunks > 0
    assert await pool.list_recovery_points() == [rp]
    assert await pool.list_recovery_points("web01:/srv") == [rp]
    assert await pool.list_recovery_points("other") == []
    assert await pool.get_recovery_point(rp.id) == rp
    assert await entries_of(pool, rp) == added
    assert await read_back(pool, rp) == files
    await pool.close()

    reopened = await pools.open(durability=durability)
    assert await reopened.list_recovery_points() == [rp]
    assert await entries_of(reopened, rp) == added
    assert await read_back(reopened, rp) == files
    entry = await reopened.find_entry(rp, b"docs/notes.txt")
    assert entry.size == len(files[b"docs/notes.txt"])
    report = await reopened.verify()
    assert report.clean, report
    assert report.broken_recovery_points == set()


async def test_identical_second_backup_stores_nothing_new(pool: StoragePool) -> None:
    """Guards deduplication across sessions: backing up the same files again (data and
    manifest) must not store one new chunk or byte."""
    files = sample_files()
    _, first, _ = await backup_files(pool, "web01:/srv", files)
    before = await pool.stats()
    rp2, second, _ = await backup_files(pool, "web01:/srv", files)
    after = await pool.stats()

    assert second.put.chunks >= first.put.chunks > 0
    assert second.put.new_chunks == 0
    assert second.put.new_stored_bytes == 0
    assert after.chunk_count == before.chunk_count
    assert after.stored_bytes == before.stored_bytes
    assert after.recovery_points == 2
    assert await read_back(pool, rp2) == files


async def test_insert_at_start_reuses_most_chunks(pool: StoragePool) -> None:
    """Guards content-defined chunking end to end: inserting 100 bytes at the start of a
    50 MB file must reuse at least 90% of its chunks, in the chunker and in the pool."""
    original = random_bytes(50 * 1000 * 1000, seed=30)
    shifted = random_bytes(100, seed=31) + original
    chunker = pool.new_chunker()
    before = {chunk_id_of(v) for v in chunker.cut(original)}
    after = {chunk_id_of(v) for v in chunker.cut(shifted)}
    reused = len(before & after) / len(before)
    assert reused >= 0.9, f"only {reused:.0%} of {len(before)} chunks reused"

    await backup_files(pool, "ds", {b"f": original})
    rp, stats, _ = await backup_files(pool, "ds", {b"f": shifted})
    assert stats.put.new_stored_bytes <= 0.1 * len(original), stats.put
    assert await read_back(pool, rp) == {b"f": shifted}


async def test_delete_and_gc_reclaim_only_that_recovery_point(pool: StoragePool) -> None:
    """Guards GC: chunks of a deleted recovery point are swept (index and files), chunks of
    the remaining one are all kept and it still reads back."""
    keep_files = {b"keep/a": random_bytes(3 * MiB, seed=40), b"keep/b": text_bytes(MiB, seed=41)}
    drop_files = {b"drop/a": random_bytes(4 * MiB, seed=42), b"drop/b": b"gone" * 1000}
    keep, _, _ = await backup_files(pool, "keep", keep_files)
    drop, _, drop_entries = await backup_files(pool, "drop", drop_files)
    drop_ids = {c for e in drop_entries for c in e.chunk_ids} | set(drop.manifest_chunks)
    before = await pool.stats()

    await pool.delete_recovery_point(drop.id)
    assert await pool.list_recovery_points() == [keep]
    report = await pool.gc(SAFETY_NONE)
    after = await pool.stats()

    assert report.recovery_points == 1
    assert report.swept_chunks == len(drop_ids)
    assert report.foreign_entries == []
    assert after.chunk_count == before.chunk_count - len(drop_ids)
    assert after.stored_bytes == before.stored_bytes - report.swept_bytes
    assert after.stored_bytes < before.stored_bytes - 4 * MiB
    assert sorted(await pool.missing(list(drop_ids))) == sorted(drop_ids)
    assert not any(pool.store.path_of(c).exists() for c in drop_ids)
    assert await read_back(pool, keep) == keep_files
    assert (await pool.verify()).clean
    assert (await pool.gc(SAFETY_NONE)).swept_chunks == 0


async def test_stats_describe_the_pool(pool: StoragePool) -> None:
    """Guards the numbers operators see: logical bytes from the records, stored bytes and
    chunk count matching the chunk files on disk, and a dedup ratio above 1 for data that
    repeats and compresses."""
    empty = await pool.stats()
    assert (empty.recovery_points, empty.chunk_count, empty.stored_bytes) == (0, 0, 0)
    assert empty.dedup_ratio == 0.0

    text = text_bytes(2 * MiB, seed=50)
    files = {b"a.txt": text, b"b.txt": text, b"c.bin": random_bytes(MiB, seed=51)}
    await backup_files(pool, "ds", files)
    stats = await pool.stats()
    on_disk = chunk_files_on_disk(pool.root)

    assert stats.recovery_points == 1
    assert stats.logical_bytes == sum(len(d) for d in files.values())
    assert stats.chunk_count == len(on_disk)
    assert stats.stored_bytes == sum(p.stat().st_size for p in on_disk)
    assert stats.dedup_ratio == pytest.approx(stats.logical_bytes / stats.stored_bytes)
    assert stats.dedup_ratio > 2.0
    assert 0 < stats.fs_free_bytes <= stats.fs_total_bytes


async def test_uncommitted_session_leaves_only_garbage(pool: StoragePool) -> None:
    """Guards the commit rule: a session left without commit() (normally or by an
    exception) is aborted and shows no recovery point; its chunks survive a default GC
    (SAFETY_FULL keeps them young, for a resume) and GC without a margin removes them."""
    data = [random_bytes(MiB, seed=60), text_bytes(MiB, seed=61)]
    async with pool.session("ds") as session:
        ids = await session.put_data(data)
        assert await session.missing(ids) == []
    assert session.state == "aborted"
    with pytest.raises(RuntimeError, match="agent went away"):
        async with pool.session("ds") as failing:
            ids += await failing.put_data([b"partial"])
            raise RuntimeError("agent went away")
    assert failing.state == "aborted"
    assert await pool.list_recovery_points() == []
    assert (await pool.stats()).chunk_count == 3

    young = await pool.gc()
    assert (young.swept_chunks, young.kept_young) == (0, 3)
    assert await pool.missing(ids) == []

    report = await pool.gc(SAFETY_NONE)
    assert report.swept_chunks == 3
    assert sorted(await pool.missing(ids)) == sorted(ids)
    assert (await pool.stats()).chunk_count == 0
    assert chunk_files_on_disk(pool.root) == []


async def test_gc_keeps_chunks_of_an_open_session(pool: StoragePool) -> None:
    """Guards GC beside a running backup: chunks a still-open session stored or was told
    are present survive GC, and the session can commit a readable recovery point."""
    async with pool.session("ds") as session:
        ids = await session.put_data([random_bytes(200 * KiB, seed=80)])
        report = await pool.gc(SAFETY_NONE)
        assert report.swept_chunks == 0
        assert report.kept_by_sessions == 1
        size = 200 * KiB
        await session.add_entries(
            [Entry(b"f", EntryType.FILE, size=size, chunk_ids=(ids[0],), chunk_sizes=(size,))]
        )
        rp = await session.commit()
    assert await read_back(pool, rp) == {b"f": random_bytes(200 * KiB, seed=80)}
    assert (await pool.gc(SAFETY_NONE)).swept_chunks == 0
