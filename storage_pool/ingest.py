"""Backing up a local directory tree into the pool.

This is the reference producer of recovery points: one local session, one walk of the
tree at `root` (walk.py, with manifest paths relative to `root`) through a
`LocalTarget`, then the commit. The parent recovery point's file entries serve as the
files cache: unchanged files (same size, mtime, ctime and inode) are not read again.
The walk never commits; if it raises, the session is abandoned and nothing is visible.

Per-file problems (vanished, unreadable, changed while read) are counted warnings: the
recovery point is committed without, or with what was read of, that file.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Literal

from storage_pool.manifest import Entry, EntryType
from storage_pool.pool import StoragePool
from storage_pool.recovery_point import RecoveryPoint
from storage_pool.target import LocalTarget
from storage_pool.walk import IngestStats, WalkOptions, WalkParams, walk_tree

__all__ = ["IngestStats", "ingest_tree", "parent_files_of"]


def parent_files_of(pool: StoragePool, rp: RecoveryPoint | None) -> dict[bytes, Entry]:
    """The regular files of `rp` that carry chunks, by path (blocking: reads the
    manifest). A hardlink group's first entry carries the chunks; the others link to it."""
    if rp is None:
        return {}
    return {
        e.path: e
        for e in pool.iter_entries_sync(rp)
        if e.type is EntryType.FILE and (e.hardlink_group is None or e.chunk_ids)
    }


async def ingest_tree(
    pool: StoragePool,
    data_source: str,
    root: Path | str,
    *,
    workers: int = 2,
    parent: RecoveryPoint | Literal["latest"] | None = "latest",
    options: WalkOptions | None = None,
) -> tuple[RecoveryPoint, IngestStats]:
    """Back up the tree at `root` as a new recovery point of `data_source`."""
    if parent == "latest":
        rps = await pool.list_recovery_points(data_source)
        parent = rps[-1] if rps else None
    started = time.perf_counter()
    root_b = os.fsencode(os.path.abspath(root))  # noqa: ASYNC240 - no I/O, string work only
    if not await asyncio.to_thread(os.path.isdir, root_b):
        raise NotADirectoryError(f"{os.fsdecode(root_b)} is not a directory")
    params = WalkParams(pool.config.chunker, pool.config.compression_level, workers)
    async with pool.session(data_source, parent=parent.id if parent else None) as session:

        def work() -> tuple[RecoveryPoint, IngestStats]:
            files = parent_files_of(pool, parent)
            stats = walk_tree(
                LocalTarget(session), root_b, [root_b], files, params=params, options=options
            )
            return session.commit_sync(), stats

        rp, stats = await asyncio.to_thread(work)
        stats.new_chunks = session.stats.put.new_chunks
        stats.new_stored_bytes = session.stats.put.new_stored_bytes
    stats.seconds = time.perf_counter() - started
    return rp, stats
