"""Garbage collection: mark and sweep, beside running backups, without a global lock.

Rule. A chunk file is deleted only if (a) no committed recovery point references it,
(b) no session that was open at any moment of this GC run has touched it (asked about it
or stored it), and (c) its mtime is older than the GC start minus
`SafetyParameters.min_chunk_age`.

Why it is safe. A session protects an id (under `MarkState.lock`) *before* it looks the
id up in the index; the sweep tests protection and deletes the index row and the file
under the same lock. So either the session's protection comes first and the chunk
survives, or the deletion comes first and the session's lookup reports the chunk
missing, and it is uploaded again. A session open when GC starts, or opened during it,
stays on GC's watch list until GC ends even if it commits meanwhile, which covers a
record written after GC listed the recovery points. The age margin (c) keeps chunks of
interrupted sessions alive for a resume, and is defence in depth.

Order of deletion: index row first, then the file. An interrupted GC leaves at worst
files with no row, which look missing to backups (and are rewritten) and are removed by
the next GC. A recovery point whose manifest cannot be read stops the sweep: GC cannot
know what it references, so it deletes nothing.

Stopping. A caller's ``stop`` event is checked between recovery points while marking and
between shards while sweeping (each shard's deletions finish under the lock first); a set
event ends the run with `GcCancelledError`, an interrupted GC as above. A server shutting
down thus waits for at most one shard, not the whole pool.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from storage_pool.errors import PoolError
from storage_pool.ids import ChunkId

if TYPE_CHECKING:
    from storage_pool.pool import StoragePool
    from storage_pool.session import Session


@dataclass(frozen=True, slots=True)
class SafetyParameters:
    min_chunk_age: timedelta


SAFETY_FULL = SafetyParameters(min_chunk_age=timedelta(hours=12))
"""Default: an interrupted backup's chunks survive 12 hours, for a resume."""
SAFETY_NONE = SafetyParameters(min_chunk_age=timedelta(0))
"""Only for tests and for an operator who knows no session needs resuming."""


class GcAbortedError(PoolError):
    """GC stopped before sweeping because it could not mark everything."""


class GcCancelledError(PoolError):
    """GC stopped because its caller asked it to (the ``stop`` event)."""


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise GcCancelledError("garbage collection stopped on request")


@dataclass(slots=True)
class GcReport:
    started_ns: int
    cutoff_ns: int
    recovery_points: int = 0
    marked_chunks: int = 0
    scanned_chunks: int = 0
    swept_chunks: int = 0
    swept_bytes: int = 0
    kept_young: int = 0
    kept_by_sessions: int = 0
    foreign_entries: list[str] = field(default_factory=list)
    duration_s: float = 0.0


def collect(
    pool: StoragePool, safety: SafetyParameters, stop: threading.Event | None = None
) -> GcReport:
    """Run one GC (blocking; the pool calls it on its executor)."""
    started = time.time_ns()
    report = GcReport(
        started_ns=started,
        cutoff_ns=started - int(safety.min_chunk_age.total_seconds() * 1e9),
    )
    pool.sync()  # pending chunks enter the index, so the sweep sees one state
    watched: set[Session] = set()
    with pool.marks.lock:
        watched.update(pool.marks.open_sessions)
        pool.marks.watchers.append(watched)
    try:
        marked = _mark(pool, report, stop)
        _sweep(pool, report, marked, watched, stop)
    finally:
        with pool.marks.lock:
            pool.marks.watchers.remove(watched)
    report.duration_s = (time.time_ns() - started) / 1e9
    return report


def _mark(pool: StoragePool, report: GcReport, stop: threading.Event | None) -> set[ChunkId]:
    marked: set[ChunkId] = set()
    try:
        rps = pool.list_recovery_points_sync()
        for rp in rps:
            _check_stop(stop)
            marked.update(rp.manifest_chunks)
            for entry in pool.iter_entries_sync(rp):
                marked.update(entry.chunk_ids)
    except GcCancelledError:
        raise
    except PoolError as err:
        raise GcAbortedError(
            f"garbage collection of {pool.root} deleted nothing: {err}. Verify the pool and"
            " delete or repair the damaged recovery point first"
        ) from err
    report.recovery_points = len(rps)
    report.marked_chunks = len(marked)
    return marked


def _sweep(
    pool: StoragePool,
    report: GcReport,
    marked: set[ChunkId],
    watched: set[Session],
    stop: threading.Event | None,
) -> None:
    store = pool.store
    for shard in store.shards():
        _check_stop(stop)
        files, foreign = store.scan_shard(shard)
        report.foreign_entries.extend(str(p) for p in foreign)
        report.scanned_chunks += len(files)
        candidates = []
        for f in files:
            if f.id in marked:
                continue
            if f.mtime_ns >= report.cutoff_ns:
                report.kept_young += 1
                continue
            candidates.append(f)
        if not candidates:
            continue
        with pool.marks.lock:
            doomed = []
            for f in candidates:
                if any(f.id in s.protected for s in watched):
                    report.kept_by_sessions += 1
                else:
                    doomed.append(f)
            if doomed:
                pool.index.remove(f.id for f in doomed)
                for f in doomed:
                    pool.marks.pending_bytes -= pool.marks.pending.pop(f.id, (0, 0))[0]
                    store.unlink(f.id)
        report.swept_chunks += len(doomed)
        report.swept_bytes += sum(f.size for f in doomed)
