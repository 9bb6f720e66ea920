"""Storage pool ingest benchmark (issue: foundation and the storage pool engine).

Builds the shared datasets, ingests them into fresh pools on the local disk and prints
a table, then one JSON line with the same figures:

- mixed 2 GiB (seed 1): MiB/s with 1 and with 2 workers, re-ingest of unchanged data,
  ingest after `make_dataset.py --mutate 2`, stored/logical ratio;
- small files (`--profile small --files 20000`): MiB/s and files/s with 2 workers;
- the "which of these 10,000 ids are missing" query on an index of 1,000,000 chunks;
- peak RSS of this process.

`--quick` shrinks everything (256 MiB mixed, 2,000 small files, 100,000-chunk index)
for a smoke run. Each run deletes its datasets and pools when it ends (`--keep` keeps
them), never right before timing anything: ext4 avoids reusing freshly freed inodes, and
deleting tens of thousands of files just before a timed ingest slows it down measurably.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from storage_pool import PoolConfig, StoragePool, framing
from storage_pool.chunker import Chunker, ChunkerParams
from storage_pool.ids import ChunkId, chunk_id_of
from storage_pool.index import ChunkIndex
from storage_pool.ingest import ingest_tree

HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024


def dataset_script() -> Path:
    shared = HERE.parent.parent / "shared" / "bench" / "make_dataset.py"
    return shared if shared.exists() else HERE / "make_dataset.py"


def make_dataset(target: Path, *args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, str(dataset_script()), str(target), *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    summary: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return summary


async def ingest(
    pool_dir: Path, src: Path, workers: int, pool: StoragePool | None = None, level: int = 3
) -> tuple[StoragePool, dict[str, float]]:
    await asyncio.to_thread(os.sync)
    if pool is None:
        pool = await StoragePool.create(pool_dir, PoolConfig(compression_level=level))
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    rp, st = await ingest_tree(pool, "bench", src, workers=workers)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return pool, {
        "seconds": wall,
        "logical_mib_s": rp.logical_bytes / MiB / wall,
        "read_mib_s": st.bytes_read / MiB / wall,
        "files_s": rp.files / wall,
        "files": rp.files,
        "logical_bytes": rp.logical_bytes,
        "new_stored_bytes": st.new_stored_bytes,
        "unchanged_files": st.unchanged_files,
        "cpu_per_wall": cpu / wall,
        "warnings": len(st.warnings),
    }


def ceiling(src: Path, threads: int, level: int) -> float:
    """MiB/s of read + chunk + hash + zstd alone (no store) over `src` with `threads`
    threads, files split by size: the in-process ceiling the ingest is compared with."""
    files = sorted(
        (p for p in src.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size, reverse=True
    )
    shares: list[list[Path]] = [[] for _ in range(threads)]
    loads = [0] * threads
    for p in files:
        i = loads.index(min(loads))
        shares[i].append(p)
        loads[i] += p.stat().st_size

    def work(paths: list[Path]) -> None:
        chunker = Chunker(ChunkerParams())
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            try:
                for block in chunker.cut_fd(fd, os.fstat(fd).st_size):
                    for piece in block:
                        chunk_id_of(piece)
                        framing.encode(piece, level)
            finally:
                os.close(fd)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(work, shares))
    return sum(loads) / MiB / (time.perf_counter() - started)


def missing_query(work: Path, chunks: int, queries: int = 10_000) -> dict[str, float]:
    """Time present() for `queries` ids (half present) against an index of `chunks` ids."""
    path = work / "index-bench.sqlite"
    for p in work.glob("index-bench.sqlite*"):
        p.unlink()
    index = ChunkIndex(path)
    rng = __import__("random").Random(7)
    sample: list[ChunkId] = []
    batch: list[tuple[ChunkId, int]] = []
    for i in range(chunks):
        cid = ChunkId(rng.randbytes(32))
        batch.append((cid, 1 << 20))
        if i % (chunks // (queries // 2)) == 0 and len(sample) < queries // 2:
            sample.append(cid)
        if len(batch) == 50_000:
            index.add(batch)
            batch = []
    index.add(batch)
    index.close()
    times = []
    for trial in range(7):
        index = ChunkIndex(path)  # fresh connection: no warm SQLite page cache
        query = sample + [ChunkId(rng.randbytes(32)) for _ in range(queries - len(sample))]
        rng.shuffle(query)
        t = time.perf_counter()
        found = index.present(query)
        times.append((time.perf_counter() - t) * 1000)
        index.close()
        assert len(found) == len(sample), (len(found), len(sample), trial)
    for p in work.glob("index-bench.sqlite*"):
        p.unlink()
    return {"median_ms": statistics.median(times), "max_ms": max(times), "chunks": chunks}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--work", type=Path, default=HERE / "out", help="scratch directory")
    ap.add_argument("--level", type=int, default=3, help="zstd level of the pools")
    ap.add_argument("--keep", action="store_true", help="keep datasets and pools")
    args = ap.parse_args()
    mixed_mb, small_files, index_chunks = (
        (256, 2000, 100_000) if args.quick else (2048, 20_000, 1_000_000)
    )
    run = args.work / f"run-{time.strftime('%Y%m%dT%H%M%S')}"
    run.mkdir(parents=True)
    # Leftovers of a --keep or interrupted run go now, well before the first timed step.
    for old in args.work.glob("run-*"):
        if old != run:
            shutil.rmtree(old, ignore_errors=True)
    print(f"datasets in {run} (script {dataset_script()})", flush=True)
    mixed = run / "mixed"
    await asyncio.to_thread(make_dataset, mixed, "--size-mb", str(mixed_mb), "--seed", "1")
    small = run / "small"
    await asyncio.to_thread(
        make_dataset, small, "--profile", "small", "--files", str(small_files), "--seed", "2"
    )
    await asyncio.to_thread(os.sync)
    await asyncio.sleep(40)  # past ext4's window for recently freed inodes (see above)

    results: dict[str, dict[str, float]] = {}
    ceil1 = await asyncio.to_thread(ceiling, mixed, 1, args.level)
    ceil2 = await asyncio.to_thread(ceiling, mixed, 2, args.level)
    pool1, results["mixed_w1"] = await ingest(run / "pool-w1", mixed, 1, level=args.level)
    await pool1.close()
    pool2, results["mixed_w2"] = await ingest(run / "pool-w2", mixed, 2, level=args.level)
    stats = await pool2.stats()
    ratio = stats.stored_bytes / results["mixed_w2"]["logical_bytes"]
    _, results["unchanged"] = await ingest(run / "pool-w2", mixed, 2, pool2)
    await asyncio.to_thread(make_dataset, mixed, "--mutate", "2", "--seed", "3")
    _, results["mutated"] = await ingest(run / "pool-w2", mixed, 2, pool2)
    await pool2.close()
    pool3, results["small_w2"] = await ingest(run / "pool-small", small, 2, level=args.level)
    await pool3.close()
    query = missing_query(run, index_chunks)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    rows = [
        ("mixed, 1 worker", results["mixed_w1"]),
        ("mixed, 2 workers", results["mixed_w2"]),
        ("mixed, unchanged re-ingest", results["unchanged"]),
        ("mixed, after --mutate 2", results["mutated"]),
        (f"small ({small_files} files), 2 workers", results["small_w2"]),
    ]
    print(f"\n{'run':36} {'MiB/s':>8} {'files/s':>9} {'seconds':>8} {'cpu/wall':>8} {'new MiB':>8}")
    for name, r in rows:
        print(
            f"{name:36} {r['logical_mib_s']:8.1f} {r['files_s']:9.0f} {r['seconds']:8.2f}"
            f" {r['cpu_per_wall']:8.2f} {r['new_stored_bytes'] / MiB:8.1f}"
        )
    w1, w2 = results["mixed_w1"]["logical_mib_s"], results["mixed_w2"]["logical_mib_s"]
    print(
        f"\nceiling (read + chunk + hash + zstd, no store), same run: {ceil1:.1f} MiB/s on 1"
        f" thread, {ceil2:.1f} on 2; ingest reaches {w1 / ceil1:.2f} and {w2 / ceil2:.2f} of it"
    )
    print(f"stored/logical (mixed, zstd level {args.level}): {ratio:.3f}")
    print(
        f"missing-ids query, 10,000 ids vs {query['chunks']:,} chunks:"
        f" median {query['median_ms']:.1f} ms, max {query['max_ms']:.1f} ms"
    )
    print(f"peak RSS of the benchmark process: {peak_rss_mib:.0f} MiB")
    figures = {
        "dataset_mixed_mib": mixed_mb,
        "small_files": small_files,
        "zstd_level": args.level,
        "ingest_mixed_w1_mib_s": round(results["mixed_w1"]["logical_mib_s"], 1),
        "ingest_mixed_w2_mib_s": round(results["mixed_w2"]["logical_mib_s"], 1),
        "ceiling_1_thread_mib_s": round(ceil1, 1),
        "ceiling_2_threads_mib_s": round(ceil2, 1),
        "ingest_w1_over_ceiling": round(w1 / ceil1, 3),
        "ingest_w2_over_ceiling": round(w2 / ceil2, 3),
        "reingest_unchanged_mib_s": round(results["unchanged"]["logical_mib_s"], 1),
        "ingest_after_mutate_mib_s": round(results["mutated"]["logical_mib_s"], 1),
        "ingest_after_mutate_new_mib": round(results["mutated"]["new_stored_bytes"] / MiB, 1),
        "ingest_small_w2_mib_s": round(results["small_w2"]["logical_mib_s"], 1),
        "ingest_small_w2_files_s": round(results["small_w2"]["files_s"]),
        "stored_over_logical": round(ratio, 4),
        "missing_query_chunks": query["chunks"],
        "missing_query_10k_median_ms": round(query["median_ms"], 1),
        "missing_query_10k_max_ms": round(query["max_ms"], 1),
        "peak_rss_mib": round(peak_rss_mib),
    }
    if not args.keep:
        await asyncio.to_thread(shutil.rmtree, run, True)
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    asyncio.run(main())
