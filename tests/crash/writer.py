"""Crash-test writer: commits backups into a storage pool in a loop until it is killed.

Run as ``python -m tests.crash.writer POOL_DIR SEED DURABILITY [--mode backup|gc]``.

Mode ``backup`` (the default) opens the pool (creating it if needed) and forever: backs up
the files of `file_plan(SEED, iteration)`, sometimes aborting the session midway, and
sometimes deletes an old recovery point and runs ``gc(SAFETY_NONE)``. Every recovery point
carries its content key in its labels (``seed``, ``iteration``, ``origin``), so a test can
check any committed RP against `file_plan` with no other state. Mode ``gc`` runs GC in a
loop over a pool a test has prepared with many deleted recovery points.

The content mixes fresh random data, blobs shared across iterations (whole, or edited so
that content-defined chunking dedups most of them) and files repeated from earlier
iterations, with sizes from 0 bytes to 3 MiB. A backup asks the pool which chunks it
lacks (`Session.missing`) and uploads only those, like an incremental backup.

Output, one flushed line per event, for the test to parse after the kill::

    open <kept> <deleted>        pool opened; StoragePool.recovered_chunks
    commit <rp id> <iteration>   the commit returned: the RP must survive any crash
    abort <iteration>            a session was abandoned midway
    deleting <rp id>             about to delete an RP (it may or may not survive a kill)
    deleted <rp id>              the deletion returned: the RP must never come back
    gc-start / gc-done <swept>   one GC run
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import random
from pathlib import Path

from storage_pool import (
    SAFETY_NONE,
    ChunkerParams,
    Entry,
    EntryType,
    PoolConfig,
    RecoveryPoint,
    StoragePool,
    chunk_id_of,
)
from storage_pool.config import CONFIG_NAME
from storage_pool.pool import Durability

KiB = 1024
MiB = 1024 * KiB
DATA_SOURCE = "crash-writer"
# Small chunks: a 3 MiB file becomes ~40 chunks, so kills land between chunk writes.
POOL_CONFIG = PoolConfig(
    chunker=ChunkerParams(min_size=16 * KiB, avg_size=64 * KiB, max_size=256 * KiB)
)
MAX_FILE = 3 * MiB
MAX_RPS = 5  # beyond this the writer deletes the oldest RP and collects garbage
ABORT_RATE = 0.15
DELETE_RATE = 0.25
LIBRARY_SIZES = (1, 777, 70_000, 300 * KiB, 900 * KiB, 1_500_000, MAX_FILE, 250 * KiB)

Files = tuple[tuple[bytes, bytes | None], ...]
"""(path, content) in manifest order; content None is a directory."""


def _text(rng: random.Random, size: int) -> bytes:
    words = [rng.randbytes(rng.randint(1, 6)).hex().encode() for _ in range(64)]
    return b" ".join(rng.choices(words, k=size // 4 + 1))[:size]


@functools.lru_cache(maxsize=len(LIBRARY_SIZES))
def library_blob(seed: int, k: int) -> bytes:
    """Blob k of the library shared by every iteration of `seed` (odd ones compress)."""
    rng = random.Random(f"library:{seed}:{k}")
    size = LIBRARY_SIZES[k]
    return _text(rng, size) if k % 2 else rng.randbytes(size)


def _size(rng: random.Random) -> int:
    band = rng.choices(range(5), weights=(5, 30, 35, 20, 10))[0]
    low, high = ((1, 1), (2, 4 * KiB), (4 * KiB, 256 * KiB), (256 * KiB, MiB), (MiB, MAX_FILE))[
        band
    ]
    return rng.randint(low, high)


def _edited(rng: random.Random, blob: bytes) -> bytes:
    at = rng.randrange(len(blob) + 1)
    return blob[:at] + rng.randbytes(rng.randint(1, 64)) + blob[at + rng.randint(0, 64) :]


@functools.lru_cache(maxsize=256)
def base_files(seed: int, iteration: int) -> tuple[bytes, ...]:
    """The fresh contents of one iteration (no references to other iterations)."""
    rng = random.Random(f"files:{seed}:{iteration}")
    out: list[bytes] = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        if kind < 0.35:
            out.append(rng.randbytes(_size(rng)))
        elif kind < 0.55:
            out.append(library_blob(seed, rng.randrange(len(LIBRARY_SIZES))))
        elif kind < 0.75:
            out.append(_edited(rng, library_blob(seed, rng.randrange(len(LIBRARY_SIZES)))))
        elif kind < 0.95:
            out.append(_text(rng, _size(rng)))
        else:
            out.append(b"")
    return tuple(out)


@functools.lru_cache(maxsize=256)
def file_plan(seed: int, iteration: int) -> Files:
    """What the backup of (seed, iteration) holds: files at the top and in a directory,
    plus, half the time, a file unchanged from one of the three previous iterations."""
    rng = random.Random(f"plan:{seed}:{iteration}")
    datas = list(base_files(seed, iteration))
    if iteration > 0 and rng.random() < 0.5:
        datas.append(base_files(seed, rng.randrange(max(0, iteration - 3), iteration))[0])
    in_dir = rng.randint(0, len(datas))
    top = [(f"f{k}".encode(), d) for k, d in enumerate(datas[in_dir:])]
    if not in_dir:
        return tuple(top)
    nested: list[tuple[bytes, bytes | None]] = [(b"d", None)]
    nested += [(f"d/g{k}".encode(), d) for k, d in enumerate(datas[:in_dir])]
    return (*nested, *top)


def expected_files(rp: RecoveryPoint) -> Files:
    """The content a recovery point must hold, from its labels alone."""
    return file_plan(int(rp.labels["seed"]), int(rp.labels["iteration"]))


async def backup(
    pool: StoragePool,
    seed: int,
    iteration: int,
    *,
    origin: str,
    abort_at: int | None = None,
) -> RecoveryPoint | None:
    """Back up `file_plan(seed, iteration)`; with `abort_at`, abandon the session just
    before that file (its earlier files are stored) and return None."""
    chunker = pool.new_chunker()
    entries: list[Entry] = []
    async with pool.session(DATA_SOURCE) as s:
        for k, (path, data) in enumerate(file_plan(seed, iteration)):
            if k == abort_at:
                return None  # leaving the block aborts the session
            if data is None:
                entries.append(Entry(path=path, type=EntryType.DIR, mode=0o755))
                continue
            pieces = [bytes(v) for v in chunker.cut(data)]
            ids = [chunk_id_of(p) for p in pieces]
            lacking = set(await s.missing(ids))
            todo = [p for p, cid in zip(pieces, ids, strict=True) if cid in lacking]
            if todo:
                await s.put_data(todo)
            entries.append(
                Entry(
                    path=path,
                    type=EntryType.FILE,
                    mode=0o644,
                    size=len(data),
                    chunk_ids=tuple(ids),
                    chunk_sizes=tuple(len(p) for p in pieces),
                )
            )
        await s.add_entries(entries)
        labels = {"seed": str(seed), "iteration": str(iteration), "origin": origin}
        return await s.commit(labels=labels)


def emit(*words: object) -> None:
    print(*words, flush=True)


async def run_backups(pool: StoragePool, seed: int, iterations: int | None) -> None:
    rps = await pool.list_recovery_points(DATA_SOURCE)
    mine = [int(rp.labels["iteration"]) for rp in rps if rp.labels.get("origin") == "writer"]
    it = max(mine, default=-1) + 1
    stop = None if iterations is None else it + iterations
    while stop is None or it < stop:
        ops = random.Random(f"ops:{seed}:{it}")
        abort_at = None
        if ops.random() < ABORT_RATE:
            abort_at = ops.randrange(len(file_plan(seed, it)) + 1)
        rp = await backup(pool, seed, it, origin="writer", abort_at=abort_at)
        if rp is None:
            emit("abort", it)
        else:
            emit("commit", rp.id, it)
        rps = await pool.list_recovery_points(DATA_SOURCE)
        if len(rps) > MAX_RPS or (len(rps) > 2 and ops.random() < DELETE_RATE):
            victim = rps[0] if ops.random() < 0.7 else ops.choice(rps[:-1])
            emit("deleting", victim.id)
            await pool.delete_recovery_point(victim.id)
            emit("deleted", victim.id)
            emit("gc-start")
            report = await pool.gc(SAFETY_NONE)
            emit("gc-done", report.swept_chunks)
        it += 1


async def run_gc(pool: StoragePool, iterations: int | None) -> None:
    done = 0
    while iterations is None or done < iterations:
        emit("gc-start")
        report = await pool.gc(SAFETY_NONE)
        emit("gc-done", report.swept_chunks)
        done += 1


async def amain(args: argparse.Namespace) -> None:
    durability = Durability(args.durability)
    if (args.pool / CONFIG_NAME).exists():
        pool = await StoragePool.open(args.pool, durability=durability)
    else:
        pool = await StoragePool.create(args.pool, POOL_CONFIG, durability=durability)
    emit("open", *pool.recovered_chunks)
    try:
        if args.mode == "gc":
            await run_gc(pool, args.iterations)
        else:
            await run_backups(pool, args.seed, args.iterations)
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.crash.writer", description=__doc__)
    parser.add_argument("pool", type=Path)
    parser.add_argument("seed", type=int)
    parser.add_argument("durability", choices=[d.value for d in Durability])
    parser.add_argument("--mode", choices=("backup", "gc"), default="backup")
    parser.add_argument(
        "--iterations", type=int, default=None, help="stop after this many (default: never)"
    )
    asyncio.run(amain(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
