"""Crash safety of the storage pool: SIGKILL a writer process at random moments, reopen.

In the style of borg's `test_compact_interrupted_does_not_poison_chunk_index`: interrupt
mid-operation, reopen from disk in this process, assert the invariants, then prove that
GC, a new backup and a restore still work. The writer is tests/crash/writer.py.

STOCKADE_CRASH_ITERATIONS sets the number of kills per durability level (default 20 for
FILESYSTEM, 10 for FILE, whose fsync per chunk makes each round slower); STOCKADE_CRASH_SEED
replays a run: the seed is printed, so pytest shows it with any failure.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import secrets
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from storage_pool import (
    SAFETY_NONE,
    ChunkerParams,
    ChunkId,
    Entry,
    EntryType,
    PoolConfig,
    RecoveryPoint,
    StoragePool,
)
from storage_pool.atomicfile import TMP_MARK
from storage_pool.config import CONFIG_NAME
from storage_pool.pool import Durability
from storage_pool.recovery_point import RP_DIR
from tests.crash.writer import DATA_SOURCE, POOL_CONFIG, Files, backup, expected_files

pytestmark = pytest.mark.crash

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ITERATIONS = {Durability.FILESYSTEM: 20, Durability.FILE: 10}
KILL_AFTER_S = (0.05, 1.5)
KILL_FROM_START_RATE = 0.2  # also kill during interpreter start-up and the recovering open
WRITER_TIMEOUT_S = 60.0
TEST_ITERATION_BASE = 1_000_000  # iterations of the backups this test makes itself


def crash_seed() -> int:
    seed = int(os.environ.get("STOCKADE_CRASH_SEED") or secrets.randbits(32))
    print(f"crash seed {seed} (replay with STOCKADE_CRASH_SEED={seed})")
    return seed


def crash_iterations(durability: Durability) -> int:
    raw = os.environ.get("STOCKADE_CRASH_ITERATIONS")
    return int(raw) if raw else DEFAULT_ITERATIONS[durability]


# -- the writer process --


@dataclass(slots=True)
class WriterRun:
    """What one killed writer announced before it died."""

    events: list[list[str]]
    stderr: str

    def ids(self, event: str) -> set[str]:
        return {e[1] for e in self.events if e[0] == event}

    def count(self, event: str) -> int:
        return sum(1 for e in self.events if e[0] == event)


class Writer:
    def __init__(self, proc: asyncio.subprocess.Process, out: Path, err: Path) -> None:
        self.proc = proc
        self.out = out
        self.err = err

    @classmethod
    async def start(
        cls, pool_dir: Path, seed: int, durability: Durability, log: Path, mode: str = "backup"
    ) -> Writer:
        out, err = log.with_suffix(".out"), log.with_suffix(".err")
        with out.open("wb") as out_f, err.open("wb") as err_f:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.crash.writer",
                str(pool_dir),
                str(seed),
                durability.value,
                "--mode",
                mode,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_f,
                stderr=err_f,
                cwd=ROOT,
            )
        return cls(proc, out, err)

    def lines(self) -> list[list[str]]:
        return [line.split() for line in self.out.read_text().splitlines()]

    def describe(self) -> str:
        return f"writer exited with {self.proc.returncode}; stderr:\n{self.err.read_text()}"

    async def wait_until(
        self, condition: Callable[[], bool], what: str, *, poll_s: float = 0.001
    ) -> None:
        """Poll `condition`; fail if the writer dies first or takes too long."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WRITER_TIMEOUT_S
        while not condition():
            if self.proc.returncode is not None:
                pytest.fail(f"writer died before {what}: {self.describe()}")
            if loop.time() > deadline:
                await self.kill()
                pytest.fail(f"writer took over {WRITER_TIMEOUT_S} s to reach {what}")
            await asyncio.sleep(poll_s)

    async def wait_open(self) -> None:
        await self.wait_until(lambda: any(e[:1] == ["open"] for e in self.lines()), "open")

    async def kill(self) -> WriterRun:
        """SIGKILL; the writer must still have been running (it never stops by itself)."""
        alive = self.proc.returncode is None
        if alive:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        assert alive and self.proc.returncode == -signal.SIGKILL, self.describe()
        return WriterRun(self.lines(), self.err.read_text())


# -- reading back and checking --


async def read_back(pool: StoragePool, rp: RecoveryPoint) -> Files:
    entries: list[Entry] = [e async for e in pool.iter_entries(rp)]
    out: list[tuple[bytes, bytes | None]] = []
    for e in entries:
        if e.type is EntryType.DIR:
            out.append((e.path, None))
        else:
            out.append((e.path, b"".join([b async for b in pool.read_file(e)])))
    return tuple(out)


def assert_same_files(got: Files, expected: Files, where: str) -> None:
    """Compare without dumping megabytes into the failure message."""
    assert [p for p, _ in got] == [p for p, _ in expected], f"{where}: paths differ"
    for (path, data), (_, want) in zip(got, expected, strict=True):
        if data != want:
            pytest.fail(
                f"{where}: {path!r} reads back {None if data is None else len(data)} bytes"
                f" that differ from the {None if want is None else len(want)} bytes backed up"
            )


async def assert_all_rps_read(pool: StoragePool, where: str) -> list[RecoveryPoint]:
    rps = await pool.list_recovery_points()
    for rp in rps:
        assert_same_files(await read_back(pool, rp), expected_files(rp), f"{where}, RP {rp.id}")
    return rps


async def assert_verify_clean(pool: StoragePool, where: str) -> None:
    v = await pool.verify()
    assert not v.problems, f"{where}: verify found damaged or missing chunks: {v.problems}"
    assert not v.manifest_errors, f"{where}: unreadable manifests: {v.manifest_errors}"
    assert not v.foreign_entries, f"{where}: foreign entries in chunks/: {v.foreign_entries}"
    assert v.clean
    # After the recovering open the index must match chunks/ exactly: no row without a
    # file (a backup would dedup against a chunk that is gone) and no file without a row.
    assert (v.index_rows_dropped, v.index_rows_added) == (0, 0), (
        f"{where}: verify had to drop {v.index_rows_dropped} index rows and add"
        f" {v.index_rows_added}: the open after the crash left the index wrong"
    )


def leftover_temp_files(pool_dir: Path) -> list[Path]:
    found = []
    for top in (pool_dir / "chunks", pool_dir / RP_DIR):
        for d in top.iterdir():
            found += [p for p in d.iterdir() if TMP_MARK in p.name]
    return found


@dataclass(slots=True)
class Ledger:
    """What the writers acknowledged, across every kill of one test."""

    acked: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    maybe_deleted: set[str] = field(default_factory=set)
    recovered: list[tuple[int, int]] = field(default_factory=list)
    writer_commits: int = 0

    def check(self, run: WriterRun, listed: set[str], where: str) -> None:
        self.writer_commits += run.count("commit")
        self.acked |= run.ids("commit")
        self.deleted |= run.ids("deleted")
        self.maybe_deleted |= run.ids("deleting")
        lost = self.acked - self.maybe_deleted - listed
        assert not lost, f"{where}: acknowledged commits are gone after the kill: {lost}"
        back = self.deleted & listed
        assert not back, f"{where}: deleted recovery points came back: {back}"
        unacked = listed - self.acked
        # The writer may die between writing a record and printing its line, once.
        assert len(unacked) <= 1, f"{where}: recovery points nobody committed: {unacked}"
        self.acked |= unacked


async def check_after_kill(
    pool: StoragePool, *, seed: int, i: int, run: WriterRun, ledger: Ledger, where: str
) -> None:
    kept, deleted = pool.recovered_chunks
    ledger.recovered.append((kept, deleted))
    assert kept >= 0
    # A kill (unlike a power cut) cannot tear a chunk file that was renamed into place.
    assert deleted == 0, f"{where}: the recovering open deleted {deleted} chunk files"
    assert not leftover_temp_files(pool.root), f"{where}: temp files survived the open"

    rps = await assert_all_rps_read(pool, where)
    ledger.check(run, {rp.id for rp in rps}, where)
    await assert_verify_clean(pool, where)

    report = await pool.gc(SAFETY_NONE)
    assert not report.foreign_entries, where
    await assert_verify_clean(pool, f"{where}, after GC")
    after_gc = await assert_all_rps_read(pool, f"{where}, after GC")
    assert {rp.id for rp in after_gc} == {rp.id for rp in rps}, f"{where}: GC changed the RPs"

    # A new backup dedups against what the crash left, and restores.
    rp = await backup(pool, seed, TEST_ITERATION_BASE + i, origin="test")
    assert rp is not None
    ledger.acked.add(rp.id)
    fresh = await pool.get_recovery_point(rp.id)
    assert_same_files(await read_back(pool, fresh), expected_files(fresh), f"{where}, new RP")


@pytest.mark.parametrize("durability", [Durability.FILE, Durability.FILESYSTEM])
async def test_sigkilled_writer_leaves_a_consistent_pool(
    tmp_path: Path, durability: Durability
) -> None:
    """Guards against a crash at any moment of a backup, an abort, a delete or a GC
    losing an acknowledged commit, resurrecting a deleted RP, leaving a torn or missing
    chunk behind a committed RP, or an index that lies about chunks/ (which would make
    the next backup reference chunks that are gone)."""
    seed = crash_seed()
    rng = random.Random(seed)
    pool_dir = tmp_path / "pool"
    pool = await StoragePool.create(pool_dir, POOL_CONFIG, durability=durability)
    await pool.close()
    ledger = Ledger()
    iterations = crash_iterations(durability)
    for i in range(iterations):
        where = f"seed {seed}, {durability} kill {i}"
        writer = await Writer.start(pool_dir, seed, durability, tmp_path / f"writer-{i}")
        if rng.random() >= KILL_FROM_START_RATE:
            await writer.wait_open()
        await asyncio.sleep(rng.uniform(*KILL_AFTER_S))
        run = await writer.kill()
        pool = await StoragePool.open(pool_dir, durability=durability)
        try:
            await check_after_kill(pool, seed=seed, i=i, run=run, ledger=ledger, where=where)
        finally:
            await pool.close()
        print(
            f"kill {i}: {run.count('commit')} commits, {run.count('abort')} aborts,"
            f" {run.count('gc-done')} GCs; recovered (kept, deleted) {pool.recovered_chunks}"
        )
    assert len(ledger.recovered) == iterations
    assert ledger.writer_commits, "no writer lived to commit: the kills tested nothing"


async def test_kill_during_pool_creation_leaves_a_pool_that_can_be_created(
    tmp_path: Path,
) -> None:
    """Guards against a crash while a pool is being created (a first start killed by
    OOM, a reboot or systemd's start timeout) leaving a directory that neither `open`
    (no config.json) nor `create` ("not empty") accepts, so the server cannot start
    until an operator deletes it by hand. The writer creates the pool when config.json
    is missing, as a server's first start would; relaunched, it must get the pool open."""
    # create() makes 4096 shard directories before it writes config.json: kill in between.
    # The kill can land too late; a fresh directory is tried then, a few times at most.
    for attempt in range(5):
        pool_dir = tmp_path / f"pool{attempt}"
        config = pool_dir / CONFIG_NAME
        first = await Writer.start(
            pool_dir, 1, Durability.FILESYSTEM, tmp_path / f"create{attempt}"
        )
        await first.wait_until(
            functools.partial(has_shards_but_no_config, pool_dir), "creating shard directories"
        )
        await first.kill()
        if not config.exists():
            break
    else:
        raise AssertionError("in 5 attempts no kill landed before create() wrote config.json")
    again = await Writer.start(pool_dir, 1, Durability.FILESYSTEM, tmp_path / "again")
    await again.wait_open()
    await asyncio.sleep(0.3)
    await again.kill()
    pool = await StoragePool.open(pool_dir)
    try:
        await assert_all_rps_read(pool, "after a killed create")
        await assert_verify_clean(pool, "after a killed create")
    finally:
        await pool.close()


def has_shards_but_no_config(pool_dir: Path) -> bool:
    chunks = pool_dir / "chunks"
    return chunks.is_dir() and any(chunks.iterdir()) and not (pool_dir / CONFIG_NAME).exists()


# -- GC interrupted mid-sweep --

# Small chunks, so one GC run has over a thousand files to sweep and a kill lands inside it.
GC_CONFIG = PoolConfig(chunker=ChunkerParams(min_size=512, avg_size=2048, max_size=8192))
GC_ROUNDS = 3
GARBAGE_RPS = 3
PROBE_AT = (0.15, 0.6)  # where in the shard order the kill happens
LATE_MARGIN = 256  # shards past the probe that must still hold garbage when GC is killed
SHARD_DIGITS = 3
SHARDS = 16**SHARD_DIGITS


def is_gone(path: Path) -> bool:
    return not path.exists()


def shard_of(cid: ChunkId) -> int:
    return int(cid.hex()[:SHARD_DIGITS], 16)


async def chunks_of(pool: StoragePool, rp: RecoveryPoint) -> set[ChunkId]:
    ids = set(rp.manifest_chunks)
    async for e in pool.iter_entries(rp):
        ids.update(e.chunk_ids)
    return ids


async def make_garbage(
    pool: StoragePool, seed: int, first: int, keep: set[str]
) -> tuple[set[ChunkId], str]:
    """Commit GARBAGE_RPS + 1 backups of iterations `first`..., then delete every RP but
    the newest and those in `keep`. Returns the chunks only deleted RPs referenced, and
    the newest RP. Backups share blobs, so the survivors share chunks with the garbage."""
    newest = ""
    for it in range(first, first + GARBAGE_RPS + 1):
        rp = await backup(pool, seed, it, origin="test")
        assert rp is not None
        newest = rp.id
    doomed: set[ChunkId] = set()
    for old in await pool.list_recovery_points():
        if old.id not in keep | {newest}:
            doomed |= await chunks_of(pool, old)
            await pool.delete_recovery_point(old.id)
    for live in await pool.list_recovery_points():
        doomed -= await chunks_of(pool, live)
    return doomed, newest


async def test_gc_killed_mid_sweep_does_not_poison_the_chunk_index(tmp_path: Path) -> None:
    """Guards against an interrupted GC leaving index rows for chunk files it already
    deleted (borg's test_compact_interrupted_does_not_poison_chunk_index): a later backup
    would then dedup against chunks that are gone and commit a broken RP. Also: the
    surviving RPs' chunks (some shared with the garbage) must all survive."""
    seed = crash_seed()
    rng = random.Random(seed)
    pool_dir = tmp_path / "pool"
    pool = await StoragePool.create(pool_dir, GC_CONFIG)
    await pool.close()
    interrupted = 0
    keep: set[str] = set()  # the first round's newest RP lives through every round
    for r in range(GC_ROUNDS):
        where = f"seed {seed}, GC kill {r}"
        pool = await StoragePool.open(pool_dir)
        try:
            garbage, newest = await make_garbage(pool, seed, r * 100, keep)
            keep = keep or {newest}
        finally:
            await pool.close()
        target = rng.uniform(*PROBE_AT) * SHARDS
        probe = min(garbage, key=lambda c: abs(shard_of(c) - target))
        late = [c for c in garbage if shard_of(c) > shard_of(probe) + LATE_MARGIN]
        probe_path = pool.store.path_of(probe)
        assert probe_path.exists() and late, where

        writer = await Writer.start(
            pool_dir, seed, Durability.FILESYSTEM, tmp_path / f"gc-{r}", mode="gc"
        )
        # Spin (no sleep) so the kill lands within microseconds of the probe's deletion,
        # often inside the same shard's batch: rows deleted, files not all unlinked yet.
        await writer.wait_until(
            functools.partial(is_gone, probe_path), "sweeping the probe chunk", poll_s=0
        )
        run = await writer.kill()
        assert run.count("gc-done") == 0, f"{where}: the first GC finished before the kill"
        if any(pool.store.path_of(c).exists() for c in late):
            interrupted += 1

        pool = await StoragePool.open(pool_dir)
        try:
            deleted = pool.recovered_chunks[1]
            assert deleted == 0, f"{where}: the recovering open deleted {deleted} chunk files"
            print(f"GC kill {r}: recovered (kept, deleted) {pool.recovered_chunks}")
            await assert_all_rps_read(pool, where)
            await assert_verify_clean(pool, where)
            async with pool.session(DATA_SOURCE) as s:
                ids = sorted(garbage)
                present = set(ids) - set(await s.missing(ids))
                for cid in present:  # the index claims it: it must be there and sound
                    await pool.get_chunk(cid)
            # Back up a deleted RP's content again: it dedups against what GC left.
            rp = await backup(pool, seed, r * 100, origin="test")  # a deleted iteration
            assert rp is not None
            assert_same_files(await read_back(pool, rp), expected_files(rp), f"{where}, new RP")
            await pool.gc(SAFETY_NONE)
            await assert_verify_clean(pool, f"{where}, after GC")
        finally:
            await pool.close()
    assert interrupted, "no round killed GC with garbage left to sweep: the test proved nothing"
