"""Damage on disk: corrupt manifest and data chunks, altered records, foreign files and a
lost index. The pool names what is broken and where, and the rest keeps working."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from storage_pool import (
    SAFETY_NONE,
    ChunkCorruptError,
    GcAbortedError,
    ManifestError,
    RecoveryPoint,
    StoragePool,
)
from storage_pool.framing import encode
from storage_pool.recovery_point import record_path
from tests.unit.pool.file_backup import backup_files, entries_of, read_back, read_entry
from tests.unit.pool.pool_opener import PoolOpener
from tests.unit.pool.sample_data import MiB, random_bytes, text_bytes

FILES_A = {b"a/one": text_bytes(MiB, seed=200), b"a/two": random_bytes(MiB, seed=201)}
FILES_B = {b"b/one": text_bytes(MiB, seed=202)}
OLD = 1_000_000_000  # 2001: older than any GC cutoff


async def two_recovery_points(pool: StoragePool) -> tuple[RecoveryPoint, RecoveryPoint]:
    rp_a, _, _ = await backup_files(pool, "source-a", FILES_A)
    rp_b, _, _ = await backup_files(pool, "source-b", FILES_B)
    assert not set(rp_a.manifest_chunks) & set(rp_b.manifest_chunks)
    return rp_a, rp_b


def flip_middle_byte(frame: bytes) -> bytes:
    i = 16 + (len(frame) - 16) // 2
    return frame[:i] + bytes([frame[i] ^ 0x40]) + frame[i + 1 :]


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "valid frame of other content": lambda frame: encode(b"\x93garbage" * 50, 3),
    "flipped byte": flip_middle_byte,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_corrupt_manifest_chunk_breaks_only_its_recovery_point(
    pool: StoragePool, damage: str
) -> None:
    """Guards against a damaged manifest chunk decoding into wrong entries, or breaking
    other recovery points: reading it raises ManifestError naming the recovery point; GC
    refuses to sweep (it cannot know what the RP references); verify names the RP."""
    rp_a, rp_b = await two_recovery_points(pool)
    path = pool.store.path_of(rp_a.manifest_chunks[0])
    path.write_bytes(DAMAGE[damage](path.read_bytes()))

    with pytest.raises(ManifestError, match=rp_a.id):
        await entries_of(pool, rp_a)
    assert await read_back(pool, rp_b) == FILES_B
    before = await pool.stats()
    with pytest.raises(GcAbortedError, match="deleted nothing"):
        await pool.gc(SAFETY_NONE)
    assert (await pool.stats()).chunk_count == before.chunk_count

    report = await pool.verify()
    assert report.broken_recovery_points == {rp_a.id}
    assert list(report.problems) == [rp_a.manifest_chunks[0]]
    assert report.problems[rp_a.manifest_chunks[0]].recovery_points == [rp_a.id]


async def test_corrupt_data_chunk_is_never_returned(pool: StoragePool) -> None:
    """Guards restores against bit rot: a damaged data chunk raises ChunkCorruptError
    naming it instead of yielding wrong bytes; verify quarantines it and names the RP, and
    the next backup of the same data writes it afresh, which heals the old RP."""
    rp_a, rp_b = await two_recovery_points(pool)
    entry = next(e for e in await entries_of(pool, rp_a) if e.path == b"a/two")
    bad = entry.chunk_ids[0]
    path = pool.store.path_of(bad)
    path.write_bytes(flip_middle_byte(path.read_bytes()))

    with pytest.raises(ChunkCorruptError, match=bad.hex()):
        await read_entry(pool, entry)
    report = await pool.verify()
    assert report.broken_recovery_points == {rp_a.id}
    assert report.problems[bad].kind == "corrupt"
    assert not path.exists()
    assert list((pool.root / "quarantine").iterdir())

    await backup_files(pool, "source-a", FILES_A)
    assert await read_back(pool, rp_a) == FILES_A
    assert await read_back(pool, rp_b) == FILES_B
    assert (await pool.verify()).clean


async def test_altered_recovery_point_record_is_refused(pool: StoragePool) -> None:
    """Guards against trusting a record that was altered or damaged (one digit changed):
    ManifestError names the record's file."""
    rp_a, _ = await two_recovery_points(pool)
    path = record_path(pool.root, rp_a)
    text = path.read_text()
    match = re.search(r'"created_ns": (\d+)', text)
    assert match is not None
    digit = match.end(1) - 1
    path.write_text(text[:digit] + str((int(text[digit]) + 1) % 10) + text[digit + 1 :])

    with pytest.raises(ManifestError, match=re.escape(str(path))):
        await pool.get_recovery_point(rp_a.id)
    with pytest.raises(ManifestError, match="checksum mismatch"):
        await pool.list_recovery_points("source-a")


async def test_foreign_files_are_reported_and_left_alone(pool: StoragePool) -> None:
    """Guards against GC or verify crashing on, or deleting, files that are not chunks
    (an operator's note, a stray copy): they are reported and kept."""
    rp_a, rp_b = await two_recovery_points(pool)
    in_shard = pool.root / "chunks" / "abc" / "README.txt"
    top_level = pool.root / "chunks" / "notes.txt"
    wrong_shard = pool.root / "chunks" / "abc" / rp_b.manifest_chunks[0].hex()
    wrong_shard.write_bytes(pool.store.path_of(rp_b.manifest_chunks[0]).read_bytes())
    a_dir = pool.root / "chunks" / "abc" / "saved"
    a_dir.mkdir()
    (a_dir / "copy").write_bytes(b"an operator's copy")
    for path in (in_shard, top_level):
        path.write_bytes(b"left here by an operator")
    for path in (in_shard, top_level, wrong_shard, a_dir):
        os.utime(path, ns=(OLD, OLD))
    foreign = {in_shard, top_level, wrong_shard, a_dir}

    report = await pool.verify()
    assert set(report.foreign_entries) == foreign
    assert report.problems == {}
    assert not report.clean
    await pool.delete_recovery_point(rp_b.id)
    gc = await pool.gc(SAFETY_NONE)
    assert {in_shard, wrong_shard, a_dir} <= {Path(p) for p in gc.foreign_entries}
    assert gc.swept_chunks > 0
    assert all(p.exists() for p in foreign)
    assert await read_back(pool, rp_a) == FILES_A


async def test_directory_named_like_a_chunk_is_foreign(pool: StoragePool) -> None:
    """Guards verify and GC against trusting names alone: a directory in a shard whose
    name has the shape of a chunk id is not a chunk file (chunk_store.foreign_entries:
    "anything in chunks/ that is not a chunk file"). It must be reported and left alone,
    not read or unlinked as a chunk, which crashes both with IsADirectoryError."""
    rp_a, _ = await two_recovery_points(pool)
    odd = pool.root / "chunks" / "abc" / ("abc" + "0" * 61)
    odd.mkdir()
    (odd / "inside").write_bytes(b"kept")
    os.utime(odd, ns=(OLD, OLD))

    report = await pool.verify()
    assert report.foreign_entries == [odd]
    assert report.problems == {}
    gc = await pool.gc(SAFETY_NONE)
    assert [Path(p) for p in gc.foreign_entries] == [odd]
    assert (odd / "inside").read_bytes() == b"kept"
    assert await read_back(pool, rp_a) == FILES_A


@pytest.mark.parametrize("loss", ["garbage", "deleted"])
async def test_lost_index_is_rebuilt_on_open(pools: PoolOpener, loss: str) -> None:
    """Guards the index as a cache: replaced by garbage or deleted, it is rebuilt from the
    chunk files on open, every recovery point reads back and dedup still works."""
    pool = await pools.create()
    rp_a, rp_b = await two_recovery_points(pool)
    stats = await pool.stats()
    await pool.close()
    index = pools.path() / "index.sqlite"
    for leftover in index.parent.glob("index.sqlite-*"):
        leftover.unlink()
    if loss == "garbage":
        index.write_bytes(b"this is not an SQLite database\n" * 200)
    else:
        index.unlink()

    pool = await pools.open()
    assert await read_back(pool, rp_a) == FILES_A
    assert await read_back(pool, rp_b) == FILES_B
    rebuilt = await pool.stats()
    assert (rebuilt.chunk_count, rebuilt.stored_bytes) == (stats.chunk_count, stats.stored_bytes)
    if loss == "garbage":
        assert list(index.parent.glob("index.sqlite.damaged-*"))
    _, again, _ = await backup_files(pool, "source-a", FILES_A)
    assert again.put.new_chunks == 0
    assert (await pool.verify()).clean
