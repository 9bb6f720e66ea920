"""One file backup's walk on the agent: roots, excludes and the files cache (local only).

`run_backup_walk` normalises the data source's absolute roots, walks them with the base
`/` (manifest paths are the absolute paths without their leading '/', ancestors of each
root included as directories) into any `BackupTarget` (the agent's is HTTP, see
agent.remote_target), and collects the file entries worth caching. It never commits and
never writes the cache: the caller commits, and only once the server confirmed the
commit does it hand `WalkResult.entries_for_cache` to `FilesCache.replace`.

Blocking: run it in a worker thread (`asyncio.to_thread`). Cancellation is the `cancel`
event; the walk then raises `WalkCancelled` and the caller abandons the session.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from storage_pool.manifest import Entry
from storage_pool.target import BackupTarget
from storage_pool.walk import (
    IngestStats,
    WalkCancelled,
    WalkOptions,
    WalkParams,
    WalkProgress,
    walk_tree,
)
from storage_pool.walk_roots import absolute_roots

__all__ = [
    "WalkCancelled",
    "WalkParams",
    "WalkProgress",
    "WalkResult",
    "run_backup_walk",
]

log = structlog.get_logger()

BASE = b"/"


@dataclass(slots=True)
class WalkResult:
    stats: IngestStats
    # Regular files with chunks, read cleanly or reused: the next files cache.
    entries_for_cache: list[Entry] = field(default_factory=list)


def run_backup_walk(
    target: BackupTarget,
    roots: Iterable[str | bytes | os.PathLike[str]],
    excludes: Sequence[str],
    params: WalkParams,
    parent_files: Mapping[bytes, Entry],
    *,
    on_progress: Callable[[WalkProgress], None] | None = None,
    cancel: threading.Event | None = None,
    one_file_system: bool = False,
) -> WalkResult:
    """Walk `roots` (absolute paths) into `target`; ValueError for a relative root or a
    malformed exclude pattern, before anything is sent."""
    result = WalkResult(IngestStats())
    options = WalkOptions(
        excludes=tuple(excludes),
        one_file_system=one_file_system,
        on_progress=on_progress,
        cancel=cancel if cancel is not None else threading.Event(),
        on_file=result.entries_for_cache.append,
    )
    planned = absolute_roots(roots)
    result.stats = walk_tree(target, BASE, planned, parent_files, params=params, options=options)
    st = result.stats
    log.info(
        "backup_walk_finished",
        roots=len(planned),
        files=st.files,
        unchanged_files=st.unchanged_files,
        bytes_read=st.bytes_read,
        new_chunks=st.new_chunks,
        warnings=len(st.warnings),
        seconds=round(st.seconds, 3),
    )
    for warning in st.warnings[:20]:  # the full list is in the stats
        log.warning("backup_walk_warning", warning=warning)
    return result
