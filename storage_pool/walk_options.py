"""The knobs and reports of a tree walk (walk.py): parameters, options, progress, stats."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from storage_pool.chunker import ChunkerParams
from storage_pool.manifest import Entry

GROUP_FILES = 64


@dataclass(frozen=True, slots=True)
class WalkParams:
    """How files become chunks: fixed by the pool (its chunker and compression)."""

    chunker: ChunkerParams
    compression_level: int
    workers: int = 2
    # Unchanged files cost no reading: a remote target may want bigger groups, so one
    # missing_sync round trip confirms more of them.
    group_files: int = GROUP_FILES


@dataclass(frozen=True, slots=True)
class WalkProgress:
    files: int  # regular files seen so far
    dirs: int
    bytes_read: int  # file bytes read so far (also inside files still being read)
    bytes_seen: int  # total size of the regular files seen so far
    path: bytes  # the object the walker is at (absolute)
    warnings: int


@dataclass(slots=True)
class WalkOptions:
    """What to leave out and how to report. `excludes` are glob patterns (excludes.py);
    setting `cancel` stops the walk with WalkCancelled."""

    excludes: Sequence[str] = ()
    one_file_system: bool = False  # record mount points found below a root, not their content
    on_progress: Callable[[WalkProgress], None] | None = None
    progress_interval: float = 0.25
    cancel: threading.Event = field(default_factory=threading.Event)
    # Called from the walker's thread with each regular file's final entry whose content
    # is trustworthy (read without changing, or reused): what a files cache may keep.
    on_file: Callable[[Entry], None] | None = None


@dataclass(slots=True)
class IngestStats:
    """What a walk (or ingest_tree) did; `warnings` name each object that was skipped."""

    files: int = 0
    dirs: int = 0
    other: int = 0
    unchanged_files: int = 0
    bytes_read: int = 0
    logical_bytes: int = 0
    chunks: int = 0
    new_chunks: int = 0  # chunks put (the target lacked them when asked)
    new_stored_bytes: int = 0  # their framed bytes
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
