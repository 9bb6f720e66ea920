"""The event loop stays responsive while the pool ingests: blocking work runs elsewhere."""

from __future__ import annotations

import asyncio
from pathlib import Path

from storage_pool import StoragePool
from storage_pool.ingest import ingest_tree
from tests.unit.pool.sample_data import KiB, MiB, random_bytes, text_bytes, write_file

TICK_S = 0.010
P99_LIMIT_S = 0.100  # the acceptance criterion, not a threshold of ours


def build_mixed_tree(root: Path) -> int:
    """~200 MB: half random, half compressible text, in big and small files."""
    files: dict[str, bytes] = {}
    for i in range(16):
        files[f"bin/blob{i:02}.bin"] = random_bytes(6 * MiB + i * 1000, seed=300 + i)
        files[f"log/app{i:02}.log"] = text_bytes(6 * MiB + i * 1000, seed=400 + i)
    for i in range(200):
        small = text_bytes if i % 2 else random_bytes
        files[f"small/d{i % 10}/f{i:03}"] = small(20 * KiB, seed=500 + i)
    for i in range(2):
        files[f"random-{i}.img"] = random_bytes(4 * MiB, seed=600 + i)
    for name, data in files.items():
        write_file(root / name, data)
    return sum(len(d) for d in files.values())


async def sample_lag(stop: asyncio.Event, lags: list[float]) -> None:
    """Sleep TICK_S at a time and record how late each wake-up is."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        expected = loop.time() + TICK_S
        await asyncio.sleep(TICK_S)
        lags.append(loop.time() - expected)


async def test_event_loop_lag_stays_low_during_ingest(tmp_path: Path, pool: StoragePool) -> None:
    """Guards against blocking work (reading, chunking, hashing, zstd, fsync, sqlite) on
    the event loop while a large tree is ingested: other coroutines (MQTT keepalives, the
    HTTP API) must keep running, with p99 wake-up lag under 100 ms."""
    root = tmp_path / "tree"
    total = build_mixed_tree(root)
    assert total > 190 * 1000 * 1000

    lags: list[float] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_lag(stop, lags), name="loop-lag-sampler")
    try:
        rp, st = await ingest_tree(pool, "lag", root, workers=2)
    finally:
        stop.set()
        await sampler

    assert st.warnings == []
    assert st.logical_bytes == rp.logical_bytes == total
    lags.sort()
    assert len(lags) >= 20, f"only {len(lags)} samples: the ingest took {st.seconds:.2f} s"
    p99 = lags[int(0.99 * (len(lags) - 1))]
    assert p99 < P99_LIMIT_S, (
        f"event-loop lag p99 {p99 * 1000:.1f} ms (max {lags[-1] * 1000:.1f} ms, median"
        f" {lags[len(lags) // 2] * 1000:.1f} ms, {len(lags)} samples) while ingesting"
        f" {total / 1e6:.0f} MB in {st.seconds:.2f} s"
    )
