"""GC beside running backups, in one process: no chunk of a committed RP may be lost.

gc.py claims GC needs no global lock: a session protects each chunk id before it looks it
up, and the sweep tests protection and deletes under the same lock. These tests race real
sessions (on the pool's worker threads) against GC runs and RP deletions, and then check
every surviving RP byte by byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from storage_pool import (
    SAFETY_NONE,
    ChunkId,
    Entry,
    EntryType,
    RecoveryPointId,
    Session,
    StoragePool,
)
from storage_pool.pool import Durability

DURABILITIES = [Durability.FILESYSTEM, Durability.FILE]
COMMITTERS = 3
TARGET_COMMITS = 50
DEADLINE_S = 10.0
ABORT_RATE = 0.1
KEEP_NEWEST = 3  # the deleter leaves the newest RPs alone

Files = dict[bytes, bytes]


@dataclass(slots=True)
class Race:
    pool: StoragePool
    seed: int
    known: dict[ChunkId, bytes] = field(default_factory=dict)  # every chunk ever stored
    live: dict[RecoveryPointId, Files] = field(default_factory=dict)
    chunks: dict[RecoveryPointId, list[ChunkId]] = field(default_factory=dict)
    dropped: list[ChunkId] = field(default_factory=list)  # of aborted or deleted backups
    deleted: set[RecoveryPointId] = field(default_factory=set)
    commits: int = 0
    aborts: int = 0
    reused: int = 0
    reuploaded: int = 0
    gc_runs: int = 0
    swept: int = 0
    kept_by_sessions: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def reuse_file(s: Session, race: Race, rng: random.Random) -> tuple[bytes, list[ChunkId]]:
    """A file made of chunks stored earlier, mostly by aborted sessions and deleted RPs
    (GC's prey), some by live RPs: ask which the pool still holds, reference those,
    upload the rest again."""
    source = race.dropped if race.dropped and rng.random() < 0.7 else sorted(race.known)
    ids = list(dict.fromkeys(rng.choices(source[-200:], k=rng.randint(1, 24))))
    lacking = await s.missing(ids)
    await asyncio.sleep(rng.uniform(0, 0.005))  # let a GC run slip in between
    if lacking:
        await s.put_data([race.known[c] for c in lacking])
    race.reused += len(ids) - len(lacking)
    race.reuploaded += len(lacking)
    return b"".join(race.known[c] for c in ids), ids


async def new_file(s: Session, race: Race, rng: random.Random) -> tuple[bytes, list[ChunkId]]:
    pieces = [rng.randbytes(rng.randint(64, 16 * 1024)) for _ in range(rng.randint(1, 8))]
    ids = await s.put_data(pieces)
    race.known.update(zip(ids, pieces, strict=True))
    return b"".join(pieces), ids


async def one_backup(race: Race, name: str, rng: random.Random) -> None:
    files: Files = {}
    entries = []
    stored: list[ChunkId] = []
    async with race.pool.session(name) as s:
        for k in range(rng.randint(1, 5)):
            make = reuse_file if race.known and rng.random() < 0.6 else new_file
            data, ids = await make(s, race, rng)
            path = f"f{k:02d}".encode()
            files[path] = data
            stored += ids
            sizes = tuple(len(race.known[c]) for c in ids)
            entries.append(
                Entry(
                    path=path,
                    type=EntryType.FILE,
                    size=len(data),
                    chunk_ids=tuple(ids),
                    chunk_sizes=sizes,
                )
            )
            await asyncio.sleep(rng.uniform(0, 0.005))
        if rng.random() < ABORT_RATE:
            race.aborts += 1
            race.dropped += stored
            return  # abandoned: its new chunks are garbage
        await s.add_entries(entries)
        rp = await s.commit()
    race.live[rp.id] = files
    race.chunks[rp.id] = stored
    race.commits += 1


async def committer(race: Race, n: int) -> None:
    rng = random.Random(f"{race.seed}:committer:{n}")
    while not race.stop.is_set():
        await one_backup(race, f"ds{n}", rng)
        if race.commits >= TARGET_COMMITS:
            race.stop.set()


async def collector(race: Race) -> None:
    while not race.stop.is_set():
        report = await race.pool.gc(SAFETY_NONE)
        race.gc_runs += 1
        race.swept += report.swept_chunks
        race.kept_by_sessions += report.kept_by_sessions


async def deleter(race: Race) -> None:
    rng = random.Random(f"{race.seed}:deleter")
    while not race.stop.is_set():
        await asyncio.sleep(rng.uniform(0.02, 0.15))
        older = sorted(race.live)[:-KEEP_NEWEST]
        if older:
            victim = rng.choice(older)
            del race.live[victim]  # forget it first: it is garbage from now on
            race.deleted.add(victim)
            race.dropped += race.chunks.pop(victim)
            await race.pool.delete_recovery_point(victim)


async def read_back(pool: StoragePool, rp_id: RecoveryPointId) -> Files:
    rp = await pool.get_recovery_point(rp_id)
    out: Files = {}
    async for e in pool.iter_entries(rp):
        out[e.path] = b"".join([b async for b in pool.read_file(e)])
    return out


async def assert_intact(pool: StoragePool, live: dict[RecoveryPointId, Files]) -> None:
    listed = {rp.id for rp in await pool.list_recovery_points()}
    assert listed == set(live), f"unexpected {listed - set(live)}, lost {set(live) - listed}"
    for rp_id, files in live.items():
        got = await read_back(pool, rp_id)
        assert got.keys() == files.keys(), rp_id
        bad = [p for p in files if got[p] != files[p]]
        assert not bad, f"RP {rp_id}: {bad} read back different bytes"
    v = await pool.verify()
    assert (v.problems, v.manifest_errors, v.foreign_entries) == ({}, {}, []), v
    assert v.clean


@pytest.mark.parametrize("durability", DURABILITIES)
async def test_gc_loop_beside_backups_and_deletes_loses_no_chunk(
    tmp_path: Path, durability: Durability
) -> None:
    """Guards against GC sweeping a chunk a running session found present (via missing()
    or put) or stored, before that session committed an RP referencing it; and against
    GC runs racing RP deletions and commits crashing or deleting live chunks."""
    pool = await StoragePool.create(tmp_path / "pool", durability=durability)
    race = Race(pool, seed=random.randrange(2**32))
    print(f"race seed {race.seed}")
    try:
        async with asyncio.timeout(DEADLINE_S * 6), asyncio.TaskGroup() as tg:
            for n in range(COMMITTERS):
                tg.create_task(committer(race, n), name=f"committer-{n}")
            tg.create_task(collector(race), name="gc-loop")
            tg.create_task(deleter(race), name="deleter")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DEADLINE_S):
                    await race.stop.wait()
            race.stop.set()
        print(
            f"{race.commits} commits, {race.aborts} aborts, {len(race.deleted)} deleted,"
            f" {race.gc_runs} GC runs swept {race.swept}, spared {race.kept_by_sessions} for"
            f" sessions; chunks reused {race.reused}, re-uploaded {race.reuploaded}"
        )
        assert race.gc_runs >= 3 and race.swept > 0 and race.deleted
        assert race.kept_by_sessions > 0, "no GC run met a chunk only protection saved"
        await assert_intact(pool, race.live)
        await pool.gc(SAFETY_NONE)
        await assert_intact(pool, race.live)
    finally:
        await pool.close()


async def store(s: Session, pieces: list[bytes]) -> tuple[Entry, bytes]:
    ids = await s.put_data(pieces)
    data = b"".join(pieces)
    entry = Entry(
        path=b"f",
        type=EntryType.FILE,
        size=len(data),
        chunk_ids=tuple(ids),
        chunk_sizes=tuple(map(len, pieces)),
    )
    return entry, data


@pytest.mark.parametrize("durability", DURABILITIES)
async def test_session_open_across_two_gc_runs_keeps_its_chunks(
    tmp_path: Path, durability: Durability
) -> None:
    """Guards against GC sweeping chunks of a session that is still open: chunks it
    stored, and chunks of a deleted RP that it found present through missing()."""
    pool = await StoragePool.create(tmp_path / "pool", durability=durability)
    rng = random.Random(7)
    try:
        async with pool.session("old") as s:
            old_pieces = [rng.randbytes(5000 + k) for k in range(20)]
            old_entry, _ = await store(s, old_pieces)
            await s.add_entries([old_entry])
            old_rp = await s.commit()
        async with pool.session("dropped") as s:
            dropped_entry, _ = await store(s, [rng.randbytes(3000) for _ in range(5)])
        await pool.delete_recovery_point(old_rp.id)

        async with pool.session("long") as s:
            new_entry, new_data = await store(s, [rng.randbytes(7000 + k) for k in range(20)])
            reused = list(old_entry.chunk_ids[::2])
            assert await s.missing(reused) == []  # present, and now protected
            first = await pool.gc(SAFETY_NONE)
            second = await pool.gc(SAFETY_NONE)
            files = {
                b"new": new_data,
                b"reused": b"".join(old_pieces[::2]),
            }
            await s.add_entries(
                [
                    Entry(
                        path=b"new",
                        type=EntryType.FILE,
                        size=len(new_data),
                        chunk_ids=new_entry.chunk_ids,
                        chunk_sizes=new_entry.chunk_sizes,
                    ),
                    Entry(
                        path=b"reused",
                        type=EntryType.FILE,
                        size=len(files[b"reused"]),
                        chunk_ids=tuple(reused),
                        chunk_sizes=tuple(map(len, old_pieces[::2])),
                    ),
                ]
            )
            rp = await s.commit()
        protected = len(new_entry.chunk_ids) + len(reused)
        # GC did run: the aborted session's chunks and the rest of the old RP are gone...
        unprotected = len(dropped_entry.chunk_ids) + len(old_entry.chunk_ids) - len(reused)
        assert first.swept_chunks == unprotected + len(old_rp.manifest_chunks)
        assert second.swept_chunks == 0
        # ...and the open session's chunks were spared by protection, not luck.
        assert first.kept_by_sessions == second.kept_by_sessions == protected
        for cid in dropped_entry.chunk_ids:
            assert not pool.store.path_of(cid).exists()

        await assert_intact(pool, {rp.id: files})
        await pool.gc(SAFETY_NONE)
        await assert_intact(pool, {rp.id: files})
    finally:
        await pool.close()


DOOMED_RPS = 100
SURVIVORS = 100
DELETE_GAP_S = 0.005


async def test_gc_runs_beside_rp_deletions_without_failing(tmp_path: Path) -> None:
    """Guards against GC's mark phase failing when an RP is deleted while GC lists the
    recovery points (the record vanishes between listing its directory and reading it):
    a deleted RP's chunks are garbage, never a reason for GC to stop. The doomed RPs are
    the ones GC reads last (their data source and ids sort last, deleted from the end), so
    each deletion falls inside a listing. The same window makes the race test above (and
    verify, which lists the same way) fail now and then."""
    pool = await StoragePool.create(tmp_path / "pool")
    rng = random.Random(3)
    live: dict[RecoveryPointId, Files] = {}
    doomed: list[RecoveryPointId] = []
    try:
        for k in range(DOOMED_RPS + SURVIVORS):
            async with pool.session("a-kept" if k < SURVIVORS else "z-doomed") as s:
                entry, data = await store(s, [rng.randbytes(100)])
                await s.add_entries([entry])
                rp = await s.commit()
            live[rp.id] = {b"f": data}
            if k >= SURVIVORS:
                doomed.append(rp.id)
        done = asyncio.Event()
        failures: list[BaseException] = []

        async def delete_all() -> None:
            for rp_id in sorted(doomed, reverse=True):
                del live[rp_id]
                await pool.delete_recovery_point(rp_id)
                await asyncio.sleep(DELETE_GAP_S)  # spread over several GC runs
            done.set()

        async def gc_until_done() -> int:
            runs = 0
            while not done.is_set() or runs == 0:
                try:
                    await pool.gc(SAFETY_NONE)
                except Exception as err:  # collect, to report every failed run at once
                    failures.append(err)
                runs += 1
            return runs

        async with asyncio.TaskGroup() as tg:
            tg.create_task(delete_all(), name="deleter")
            gc_task = tg.create_task(gc_until_done(), name="gc-loop")
        if failures:
            msg = f"{len(failures)} of {gc_task.result()} GC runs failed: {failures[0]!r}"
            raise AssertionError(msg) from failures[0]
        await pool.gc(SAFETY_NONE)
        await assert_intact(pool, live)
    finally:
        await pool.close()
