"""Back up a tree with every kind of object into a real pool, restore it, compare."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.restore import TMP_PREFIX, RestoreOptions, RestoreReport, restore
from storage_pool import Entry, EntryType, StoragePool, chunk_id_of
from storage_pool.ingest import ingest_tree
from tests.support.tree_compare import Compare, assert_same_tree, files_named, snapshot
from tests.unit.agent.chunk_source import MemoryChunkFetcher, PoolChunkFetcher, aiter_of
from tests.unit.agent.sample_tree import ODD_NAME, SPARSE_SIZE, build_rich_tree
from tests.unit.pool.sample_data import MiB

IS_ROOT = os.geteuid() == 0


async def backup_and_restore(
    pool: StoragePool, source: Path, target: Path, **options: object
) -> tuple[RestoreReport, PoolChunkFetcher]:
    rp, stats = await ingest_tree(pool, "host:/tree", source)
    assert stats.warnings == []
    fetcher = PoolChunkFetcher(pool)
    report = await restore(
        pool.iter_entries(rp),
        fetcher,
        RestoreOptions(target=target, **options),  # type: ignore[arg-type]
    )
    return report, fetcher


async def test_full_restore_reproduces_every_kind_of_object(
    tmp_path: Path, pool: StoragePool
) -> None:
    """Guards restore fidelity: content, sparseness, modes incl. setuid/sticky, owners (as
    root), ns mtimes and file atimes, post-order directory mtimes, user.* xattrs, symlinks
    (dangling too), hardlinks, a fifo, non-UTF-8 names and names with newlines."""
    source, target = tmp_path / "source", tmp_path / "restored"
    source.mkdir()
    build_rich_tree(source)
    progress: list[tuple[int, int, bytes]] = []

    rp, _ = await ingest_tree(pool, "host:/tree", source)
    fetcher = PoolChunkFetcher(pool)
    report = await restore(
        pool.iter_entries(rp),
        fetcher,
        RestoreOptions(target=target),
        on_progress=lambda *args: progress.append(args),
    )

    assert report.warnings == []
    assert (report.failed, report.skipped, report.renamed) == (0, 0, 0)
    assert (report.dirs, report.symlinks, report.hardlinks, report.specials) == (5, 3, 2, 1)
    assert report.files == 12  # 14 regular names, 2 of them later links of hl_a
    assert_same_tree(source, target, Compare(owner=IS_ROOT, atime=True))
    assert files_named(target, TMP_PREFIX) == []
    assert progress[-1][:2] == (report.files, report.bytes)

    restored = snapshot(target)
    assert restored[b"sparse"].size == SPARSE_SIZE
    assert restored[b"sparse"].allocated < SPARSE_SIZE // 4, "the sparse file was filled in"
    assert restored[b"setuid"].mode == 0o4755
    assert restored[b"shared"].mode == 0o1777
    assert restored[b"sub/" + ODD_NAME + b"/inner"].kind == "file"
    # The chunk wholly inside the trailing hole (the 8 MiB maximum chunk ends before it)
    # is not fetched.
    assert fetcher.bytes_fetched < report.bytes - MiB


async def test_restore_into_existing_identical_tree_overwrites_cleanly(
    tmp_path: Path, pool: StoragePool
) -> None:
    """A second restore over the first (overwrite mode) replaces every object in place and
    leaves the tree as it was, hardlinks included."""
    source, target = tmp_path / "source", tmp_path / "restored"
    source.mkdir()
    build_rich_tree(source)
    await backup_and_restore(pool, source, target)
    report, _ = await backup_and_restore(pool, source, target, conflict="overwrite")
    assert report.warnings == []
    assert report.files == 12
    assert_same_tree(source, target, Compare(owner=IS_ROOT))


@pytest.mark.skipif(IS_ROOT, reason="checks the non-root behaviour")
async def test_non_root_restore_warns_about_owners_and_devices(tmp_path: Path) -> None:
    """Without root, a foreign owner cannot be set and a device cannot be made: both are
    warnings, the file itself is restored (setuid bit included: it is ours)."""
    data = b"#!/bin/sh\n"
    entries = [
        Entry(path=b"dev", type=EntryType.CHAR_DEVICE, rdev=os.makedev(1, 3)),
        Entry(
            path=b"tool",
            type=EntryType.FILE,
            mode=0o4755,
            uid=0,
            gid=0,
            size=len(data),
            chunk_ids=(chunk_id_of(data),),
            chunk_sizes=(len(data),),
        ),
    ]
    report = await restore(
        aiter_of(entries),
        MemoryChunkFetcher([data]),
        RestoreOptions(target=tmp_path / "t", preserve_owner=True),
    )
    assert (report.files, report.skipped, report.failed) == (1, 1, 0)
    messages = {w.path: w.message for w in report.warnings}
    assert "needs root" in messages[b"dev"]
    assert messages[b"tool"].startswith("cannot set owner 0:0")
    assert stat.S_IMODE(os.stat(tmp_path / "t" / "tool").st_mode) == 0o4755


@pytest.mark.skipif(not IS_ROOT, reason="creating device nodes needs root")
async def test_devices_are_recreated_as_root(tmp_path: Path) -> None:
    null = os.makedev(1, 3)
    entries = [
        Entry(
            path=b"null",
            type=EntryType.CHAR_DEVICE,
            mode=0o640,
            uid=7,
            gid=8,
            rdev=null,
            mtime_ns=1_234_567_891,
        )
    ]
    report = await restore(
        aiter_of(entries), MemoryChunkFetcher(), RestoreOptions(target=tmp_path / "t")
    )
    assert (report.specials, report.warnings) == (1, [])
    st = os.lstat(tmp_path / "t" / "null")
    assert (stat.S_ISCHR(st.st_mode), st.st_rdev, stat.S_IMODE(st.st_mode)) == (True, null, 0o640)
    assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (7, 8, 1_234_567_891)
