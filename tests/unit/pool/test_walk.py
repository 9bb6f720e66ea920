"""walk_tree over a real pool through LocalTarget: roots, excludes, progress, cancel."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from storage_pool import ChunkId, Entry, EntryType, RecoveryPoint, StoragePool
from storage_pool.target import LocalTarget
from storage_pool.walk import (
    IngestStats,
    WalkCancelled,
    WalkOptions,
    WalkParams,
    WalkProgress,
    walk_tree,
)
from tests.unit.pool.file_backup import entries_of, read_entry, tree_key
from tests.unit.pool.sample_data import KiB, MiB, random_bytes, text_bytes, write_file


async def walk_commit(
    pool: StoragePool,
    roots: Sequence[Path | bytes],
    *,
    base: bytes = b"/",
    parent_files: Mapping[bytes, Entry] | None = None,
    options: WalkOptions | None = None,
) -> tuple[RecoveryPoint, IngestStats]:
    """One walk into a fresh session of data source "ds", committed by the caller's side
    as the agent and ingest_tree do."""
    params = WalkParams(pool.config.chunker, pool.config.compression_level, workers=2)
    roots_b = [os.fsencode(r) for r in roots]
    async with pool.session("ds") as session:

        def work() -> tuple[RecoveryPoint, IngestStats]:
            target = LocalTarget(session)
            files = parent_files or {}
            stats = walk_tree(target, base, roots_b, files, params=params, options=options)
            return session.commit_sync(), stats

        return await asyncio.to_thread(work)


def manifest_path(path: Path | str) -> bytes:
    return os.fsencode(path).lstrip(b"/")


def ancestors(path: Path) -> list[bytes]:
    parts = manifest_path(path).split(b"/")
    return [b"/".join(parts[:i]) for i in range(1, len(parts))]


async def test_multiple_roots_record_ancestors_in_manifest_order(
    tmp_path: Path, pool: StoragePool
) -> None:
    """Guards multi-root backups with absolute paths: each root's ancestors appear as
    directory entries with their real metadata, overlapping roots are merged (no entry
    twice), a file may be a root, a missing root is a warning, and the whole manifest is
    depth-first with names sorted bytewise across roots."""
    src = tmp_path / "src"
    files = {
        "a/x/one": b"one",
        "a/x/two": text_bytes(40 * KiB, seed=1),
        "a.txt": b"a dot txt",
        "b/deep/er/leaf": random_bytes(300 * KiB, seed=2),
        "c/not-a-root": b"left out",
    }
    for rel, data in files.items():
        write_file(src / rel, data)
    roots = [src / "b/deep", src / "a", src / "a.txt", src / "a/x", src / "missing"]
    rp, st = await walk_commit(pool, roots)
    entries = await entries_of(pool, rp)
    paths = [e.path for e in entries]

    assert paths == sorted(paths, key=tree_key)
    assert len(paths) == len(set(paths))
    assert st.warnings == [f"{src / 'missing'}: backup root does not exist, skipped"]
    p = manifest_path(src)
    expected = [
        *ancestors(src / "a"),
        p + b"/a",
        p + b"/a/x",
        p + b"/a/x/one",
        p + b"/a/x/two",
        p + b"/a.txt",
        p + b"/b",
        p + b"/b/deep",
        p + b"/b/deep/er",
        p + b"/b/deep/er/leaf",
    ]
    assert paths == expected
    by_path = {e.path: e for e in entries}
    for anc in [*ancestors(src / "a"), p + b"/b"]:
        lst = os.lstat(b"/" + anc)
        e = by_path[anc]
        assert e.type is EntryType.DIR
        assert (e.mode, e.mtime_ns, e.inode) == (lst.st_mode & 0o7777, lst.st_mtime_ns, lst.st_ino)
    for rel, data in files.items():
        if rel.startswith("c/"):
            continue
        assert await read_entry(pool, by_path[p + b"/" + rel.encode()]) == data
    assert (st.files, st.bytes_read) == (4, sum(len(d) for r, d in files.items() if r[0] != "c"))


async def test_excludes_skip_names_paths_and_whole_directories(
    tmp_path: Path, pool: StoragePool
) -> None:
    """Guards exclusions: a name pattern excludes at any depth, an anchored path pattern
    only that path, `**` crosses directories, and an excluded directory is not descended
    (nothing below it is read)."""
    src = tmp_path / "src"
    keep = ["keep.txt", "sub/keep.txt", "sub/cache.d/x", "logs/app/today.txt"]
    drop = [
        "a.tmp",
        "sub/deeper/b.tmp",
        "skipdir/big.bin",
        "sub/skipdir/c",
        "logs/app/old/1.log",
        "logs/x/y/old/2.log",
    ]
    for rel in keep + drop:
        write_file(src / rel, rel.encode())
    excludes = ["*.tmp", f"{src}/skipdir", "sub/skipdir", "/**/logs/**/old"]
    rp, st = await walk_commit(pool, [src], options=WalkOptions(excludes=excludes))
    p = manifest_path(src) + b"/"
    files = {e.path[len(p) :] for e in await entries_of(pool, rp) if e.type is EntryType.FILE}
    assert files == {k.encode() for k in keep}
    assert st.bytes_read == sum(len(k) for k in keep)
    assert st.warnings == []


async def test_cancel_leaves_no_recovery_point(tmp_path: Path, pool: StoragePool) -> None:
    """Guards cancellation: setting the event stops the walk with WalkCancelled (between
    files, and between the chunks of a large file), and since the caller never commits,
    no recovery point exists afterwards; the pool still takes a backup."""
    src = tmp_path / "src"
    for i in range(20):
        write_file(src / f"f{i:02}", text_bytes(4 * KiB, seed=i))
    write_file(src / "z-big", random_bytes(24 * MiB, seed=99))
    cancel = threading.Event()

    def stop_after_three(p: WalkProgress) -> None:
        if p.files >= 3:
            cancel.set()

    opts = WalkOptions(on_progress=stop_after_three, progress_interval=0, cancel=cancel)
    with pytest.raises(WalkCancelled):
        await walk_commit(pool, [src], options=opts)
    assert await pool.list_recovery_points("ds") == []

    cancel_big = threading.Event()

    def stop_in_big_file(p: WalkProgress) -> None:
        if p.bytes_read >= 8 * MiB:
            cancel_big.set()

    opts = WalkOptions(on_progress=stop_in_big_file, progress_interval=0, cancel=cancel_big)
    with pytest.raises(WalkCancelled):
        await walk_commit(pool, [src / "z-big"], options=opts)
    assert await pool.list_recovery_points("ds") == []

    rp, _ = await walk_commit(pool, [src])
    assert rp.files == 21


async def test_progress_reports_counts_and_the_current_path(
    tmp_path: Path, pool: StoragePool
) -> None:
    """Guards progress: the walker reports files, bytes seen and read and where it is,
    and its last report matches the walk's stats."""
    src = tmp_path / "src"
    sizes = {f"d{i % 2}/f{i}": (i + 1) * 10 * KiB for i in range(10)}
    for rel, size in sizes.items():
        write_file(src / rel, text_bytes(size, seed=size))
    reports: list[WalkProgress] = []
    rp, st = await walk_commit(
        pool, [src], options=WalkOptions(on_progress=reports.append, progress_interval=0)
    )
    assert reports, "on_progress was never called"
    last = reports[-1]
    assert (last.files, last.bytes_seen, last.bytes_read) == (
        10,
        sum(sizes.values()),
        st.bytes_read,
    )
    assert last.dirs == st.dirs
    assert all(
        r.path.startswith(os.fsencode(src)) or os.fsencode(src).startswith(r.path) for r in reports
    )
    assert [r.files for r in reports] == sorted(r.files for r in reports)
    assert rp.files == 10


async def test_parent_files_skip_reading_unless_a_chunk_is_gone(
    tmp_path: Path, pool: StoragePool
) -> None:
    """Guards reuse through parent_files (the files cache): an unchanged file is not read
    when the target still holds its chunks, and is read again when it does not."""
    src = tmp_path / "src"
    data = {"one": random_bytes(700 * KiB, seed=5), "two": text_bytes(20 * KiB, seed=6)}
    for rel, d in data.items():
        write_file(src / rel, d)
    rp1, _ = await walk_commit(pool, [src])
    cache = {e.path: e for e in await entries_of(pool, rp1) if e.type is EntryType.FILE}
    _rp2, st2 = await walk_commit(pool, [src], parent_files=cache)
    assert (st2.bytes_read, st2.unchanged_files) == (0, 2)

    # A cache entry whose chunk the pool lacks: the file is read again, and correct.
    p = manifest_path(src)
    bogus = dict(cache)
    one = bogus[p + b"/one"]
    gone = ChunkId(b"\x01" * 32)
    bogus[p + b"/one"] = replace(one, chunk_ids=(gone, *one.chunk_ids[1:]))
    rp3, st3 = await walk_commit(pool, [src], parent_files=bogus)
    assert (st3.bytes_read, st3.unchanged_files) == (len(data["one"]), 1)
    entry = await pool.find_entry(rp3, p + b"/one")
    assert await read_entry(pool, entry) == data["one"]


async def test_one_file_system_records_mount_points_without_descending(
    pool: StoragePool,
) -> None:
    """Guards `one_file_system`: a directory on another filesystem below a root (here
    /dev/shm, a tmpfs under /dev) is recorded but not descended."""
    if os.stat("/dev/shm").st_dev == os.stat("/dev").st_dev:
        pytest.skip("/dev/shm is not a separate mount here")
    marker = f"/dev/shm/stockade-walk-{os.getpid()}-{threading.get_ident()}"
    write_file(Path(marker), b"below a mount point")
    try:
        rp, _ = await walk_commit(pool, [Path("/dev")], options=WalkOptions(one_file_system=True))
    finally:
        os.unlink(marker)
    paths = [e.path for e in await entries_of(pool, rp)]
    assert b"dev/shm" in paths
    assert not [p for p in paths if p.startswith(b"dev/shm/")]
