"""Verify: re-read and re-hash chunk files, and tell which recovery points they break.

Pass 1 walks every chunk file; all of them, or a random sample, are read, decoded and
hashed against their name. Pass 2 reads every manifest and matches what it references
against what pass 1 found, so each damaged or missing chunk is reported with the
recovery points it breaks, and an unreadable manifest is reported for its own RP.

What verify changes, so the next backup heals what it can: a damaged chunk file is
moved to `quarantine/` and its index row dropped; an index row whose file is gone is
dropped; a file the index lacks is added. A backup that meets the same content again
then writes the chunk afresh, which repairs every RP that references it.

Repair hook: pass a `ChunkSource` (the cloud vault, later; another pool in tests) and
each damaged or missing chunk it can supply is fetched, checked against its id and
written back.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from storage_pool import framing
from storage_pool.chunk_store import ChunkFile
from storage_pool.errors import PoolError
from storage_pool.ids import ChunkId, RecoveryPointId, chunk_id_of

if TYPE_CHECKING:
    from storage_pool.pool import StoragePool


class ChunkSource(Protocol):
    """Another copy to repair from. Return the chunk's plaintext, or None if absent."""

    async def fetch_chunk(self, cid: ChunkId) -> bytes | None: ...


@dataclass(slots=True)
class ChunkProblem:
    id: ChunkId
    path: Path
    kind: str  # "corrupt" or "missing"
    reason: str
    recovery_points: list[RecoveryPointId] = field(default_factory=list)
    repaired: bool = False


@dataclass(slots=True)
class VerifyReport:
    chunk_files: int = 0
    checked_chunks: int = 0
    checked_bytes: int = 0
    problems: dict[ChunkId, ChunkProblem] = field(default_factory=dict)
    manifest_errors: dict[RecoveryPointId, str] = field(default_factory=dict)
    recovery_points: int = 0
    foreign_entries: list[Path] = field(default_factory=list)
    index_rows_dropped: int = 0
    index_rows_added: int = 0

    @property
    def clean(self) -> bool:
        return not self.problems and not self.manifest_errors and not self.foreign_entries

    @property
    def broken_recovery_points(self) -> set[RecoveryPointId]:
        broken = set(self.manifest_errors)
        for p in self.problems.values():
            if not p.repaired:
                broken.update(p.recovery_points)
        return broken


def _check_file(pool: StoragePool, cf: ChunkFile) -> str | None:
    """None when the chunk is sound, else what is wrong with it."""
    try:
        frame = cf.path.read_bytes()
    except FileNotFoundError:
        return None  # deleted since the walk (GC): not damage
    try:
        data = framing.decode(frame)
    except framing.FrameError as err:
        return str(err)
    if chunk_id_of(data) != cf.id:
        return "content does not hash to the chunk's id"
    return None


async def verify(
    pool: StoragePool,
    *,
    sample: float | None = None,
    seed: int | None = None,
    repair_from: ChunkSource | None = None,
    quarantine: bool = True,
) -> VerifyReport:
    report = VerifyReport()
    await pool.run(pool.sync)  # pending chunks enter the index first: one state to check
    files = await pool.run(lambda: list(pool.store.iter_files()))
    report.chunk_files = len(files)
    report.foreign_entries = await pool.run(pool.store.foreign_entries)
    on_disk = {cf.id for cf in files}
    to_check = files
    if sample is not None and sample < 1.0:
        rng = random.Random(seed)
        to_check = [cf for cf in files if rng.random() < sample]

    # Pass 1, in batches spread over the pool's executor.
    batch_size = 64
    batches = [to_check[i : i + batch_size] for i in range(0, len(to_check), batch_size)]

    def check_batch(batch: list[ChunkFile]) -> list[tuple[ChunkFile, str]]:
        return [(cf, why) for cf in batch if (why := _check_file(pool, cf)) is not None]

    sem = asyncio.Semaphore(4)

    async def run_batch(batch: list[ChunkFile]) -> list[tuple[ChunkFile, str]]:
        async with sem:
            return await pool.run(check_batch, batch)

    for bad in await asyncio.gather(*(run_batch(b) for b in batches)):
        for cf, why in bad:
            report.problems[cf.id] = ChunkProblem(cf.id, cf.path, "corrupt", why)
    report.checked_chunks = len(to_check)
    report.checked_bytes = sum(cf.size for cf in to_check)

    # Pass 2: what each recovery point references.
    await pool.run(_match_recovery_points, pool, report, on_disk)

    # Make the index tell the truth, so backups re-upload what is gone.
    await pool.run(_reconcile_index, pool, report, on_disk, quarantine)

    if repair_from is not None:
        await _repair(pool, report, repair_from)
    return report


def _match_recovery_points(pool: StoragePool, report: VerifyReport, on_disk: set[ChunkId]) -> None:
    rps = pool.list_recovery_points_sync()
    report.recovery_points = len(rps)
    for rp in rps:
        seen_here: set[ChunkId] = set()

        def note(
            cid: ChunkId, rp_id: RecoveryPointId = rp.id, seen: set[ChunkId] = seen_here
        ) -> None:
            if cid in seen:
                return
            seen.add(cid)
            problem = report.problems.get(cid)
            if problem is None and cid not in on_disk and not pool.store.path_of(cid).exists():
                problem = report.problems[cid] = ChunkProblem(
                    cid, pool.store.path_of(cid), "missing", "the chunk file does not exist"
                )
            if problem is not None:
                problem.recovery_points.append(rp_id)

        for cid in rp.manifest_chunks:
            note(cid)
        try:
            for entry in pool.iter_entries_sync(rp):
                for cid in entry.chunk_ids:
                    note(cid)
        except PoolError as err:
            report.manifest_errors[rp.id] = str(err)


def _reconcile_index(
    pool: StoragePool, report: VerifyReport, on_disk: set[ChunkId], quarantine: bool
) -> None:
    bad = [p.id for p in report.problems.values() if p.kind == "corrupt"]
    if quarantine and bad:
        pool.index.remove(bad)
        for cid in bad:
            pool.store.quarantine(cid)
    indexed = pool.index.iter_ids()
    indexed_set = set(indexed)
    gone = [cid for cid in indexed if cid not in on_disk and not pool.store.path_of(cid).exists()]
    pool.index.remove(gone)
    report.index_rows_dropped = len(gone) + (len(bad) if quarantine else 0)
    with pool.marks.lock:  # written since the sync above: not durable yet, not ours to index
        pending = set(pool.marks.pending)
    unindexed = [
        cid
        for cid in on_disk
        if cid not in indexed_set and cid not in report.problems and cid not in pending
    ]
    rows = []
    for cid in unindexed:
        try:
            rows.append((cid, pool.store.path_of(cid).stat().st_size))
        except FileNotFoundError:
            continue
    pool.index.add(rows)
    report.index_rows_added = len(rows)


async def _repair(pool: StoragePool, report: VerifyReport, source: ChunkSource) -> None:
    level = pool.config.compression_level
    for problem in report.problems.values():
        data = await source.fetch_chunk(problem.id)
        if data is None or chunk_id_of(data) != problem.id:
            continue
        encoded = framing.encode_chunk(data, level)

        def write(chunk: framing.EncodedChunk = encoded) -> None:
            tmp = pool.store.write_tmp(chunk)
            pool.store.rename_into_place(chunk.id, tmp)
            pool.store.sync_dirs([chunk.id])
            pool.index.add([(chunk.id, len(chunk.frame))])

        await pool.run(write)
        problem.repaired = True
