"""run_backup_walk with the files cache, over real pools through LocalTarget."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest

from agent.backup_source import WalkCancelled, WalkParams, WalkProgress, WalkResult, run_backup_walk
from agent.files_cache import FilesCache
from storage_pool import Entry, EntryType, RecoveryPoint, StoragePool
from storage_pool.target import LocalTarget
from tests.unit.pool.file_backup import read_entry
from tests.unit.pool.pool_opener import PoolOpener
from tests.unit.pool.sample_data import KiB, random_bytes, text_bytes, write_file


async def backup(
    pool: StoragePool,
    roots: list[Path],
    parent_files: Mapping[bytes, Entry],
    *,
    excludes: tuple[str, ...] = (),
    cancel: threading.Event | None = None,
) -> tuple[RecoveryPoint, WalkResult]:
    """The agent's sequence, with a local session standing in for the server's."""
    params = WalkParams(pool.config.chunker, pool.config.compression_level)
    reports: list[WalkProgress] = []
    async with pool.session("host:files") as session:

        def work() -> tuple[RecoveryPoint, WalkResult]:
            res = run_backup_walk(
                LocalTarget(session),
                roots,
                excludes,
                params,
                parent_files,
                on_progress=reports.append,
                cancel=cancel,
            )
            return session.commit_sync(), res

        rp, res = await asyncio.to_thread(work)
    assert reports, "no progress was reported"
    return rp, res


def build_source(tmp_path: Path) -> tuple[list[Path], dict[bytes, bytes]]:
    etc, docs = tmp_path / "etc", tmp_path / "home" / "ann" / "docs"
    data = {
        etc / "passwd": text_bytes(3 * KiB, seed=1),
        etc / "ssh" / "config": text_bytes(1 * KiB, seed=2),
        docs / "report.bin": random_bytes(900 * KiB, seed=3),
        docs / "notes.txt": text_bytes(20 * KiB, seed=4),
        docs / "scratch.tmp": b"excluded",
        docs / "empty": b"",
    }
    for path, content in data.items():
        write_file(path, content)
    return [etc, docs], {os.fsencode(p).lstrip(b"/"): d for p, d in data.items()}


async def test_files_cache_makes_an_unchanged_backup_read_nothing(
    tmp_path: Path, pools: PoolOpener
) -> None:
    """Guards the agent's incremental backups: after a backup whose file entries went
    into the files cache (once committed), an unchanged source is not read at all; a
    backup into a pool that lacks the cached chunks (a fresh pool) reads every file
    again instead of referencing chunks that are not there, and restores correctly."""
    roots, files = build_source(tmp_path / "src")
    wanted = {p: d for p, d in files.items() if not p.endswith(b".tmp")}
    cache_path = tmp_path / "state" / "files-cache.sqlite"
    pool = await pools.create("pool")

    with FilesCache.open(cache_path) as cache:
        rp1, res1 = await backup(pool, roots, {}, excludes=("*.tmp",))
        assert res1.stats.bytes_read == sum(map(len, wanted.values()))
        assert {e.path for e in res1.entries_for_cache} == {p for p, d in wanted.items() if d}
        await asyncio.to_thread(cache.replace, "ds-1", rp1.id, res1.entries_for_cache)

    with FilesCache.open(cache_path) as cache:
        rp_id, parent_files = await asyncio.to_thread(cache.load, "ds-1")
    assert rp_id == rp1.id
    rp2, res2 = await backup(pool, roots, parent_files, excludes=("*.tmp",))
    assert (res2.stats.bytes_read, res2.stats.unchanged_files) == (0, 4)
    assert res2.stats.warnings == []

    fresh = await pools.create("fresh")
    rp3, res3 = await backup(fresh, roots, parent_files, excludes=("*.tmp",))
    assert res3.stats.bytes_read == sum(map(len, wanted.values()))
    assert res3.stats.unchanged_files == 0
    entries = {e.path: e async for e in fresh.iter_entries(rp3)}
    assert {p for p, e in entries.items() if e.type is EntryType.FILE} == set(wanted)
    for path, data in wanted.items():
        assert await read_entry(fresh, entries[path]) == data
    for root in roots:  # every ancestor of a root is a directory entry
        parts = os.fsencode(root).lstrip(b"/").split(b"/")
        for i in range(1, len(parts) + 1):
            assert entries[b"/".join(parts[:i])].type is EntryType.DIR
    assert rp2.files == rp3.files == 5


async def test_cancelled_walk_commits_nothing(tmp_path: Path, pool: StoragePool) -> None:
    """Guards the agent's cancel: a set event stops the walk with WalkCancelled, so the
    caller neither commits nor writes the files cache."""
    roots, _ = build_source(tmp_path / "src")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(WalkCancelled):
        await backup(pool, roots, {}, cancel=cancel)
    assert await pool.list_recovery_points("host:files") == []


async def test_relative_roots_and_bad_patterns_fail_before_walking(pool: StoragePool) -> None:
    """Guards argument checks: a relative root or an empty pattern is refused before
    anything reaches the target."""
    params = WalkParams(pool.config.chunker, pool.config.compression_level)
    async with pool.session("host:files") as session:
        target = LocalTarget(session)
        with pytest.raises(ValueError, match="not an absolute path"):
            run_backup_walk(target, ["etc"], (), params, {})
        with pytest.raises(ValueError, match="empty"):
            run_backup_walk(target, ["/etc"], ("/",), params, {})
        assert session.stats.entries == 0
