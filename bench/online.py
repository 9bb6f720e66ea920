"""Online backup benchmark (issue 5): copy a pool RP to a vault, against a plain upload.

Run as `.venv/bin/python -m bench.online` from the repository root (`make bench-online`).
Builds the shared mixed dataset (make_dataset.py, seed 1, 2 GiB; `--size-mb` for a quick
run), ingests it into a local pool (`ingest_tree`, 2 workers), then for each backend
(folder, Azurite, moto: the test doubles of ../shared/COMPONENTS.md, started here on
loopback with the same binaries the tests use):

1. online copy: `copy_recovery_point` of the RP into a fresh vault through a scratch
   area bounded at `--scratch-pct` of the dataset (default 5 %), `--parallelism` uploads
   (default 4). MiB/s of the RP's logical bytes and of the bytes uploaded; the scratch
   high-water mark against the bound;
2. plain upload: the same number of bytes as pack-sized files of random bytes (written
   before the clock starts), sent with the backend's `put` (the SDK call the vault uses:
   block/multipart upload with MD5s and the SHA-256 check) and the same parallelism.
   `ratio` = online bytes-uploaded MiB/s / plain MiB/s (issue 5 target: >= 0.8);
3. restore from the vault: a fresh server (fresh location cache) lists the online RPs
   and `restore_into_pool` re-seeds an empty pool; MiB/s of the RP's logical bytes. The
   restored RP record must equal the source one and every chunk must be present.

Azurite runs with disk persistence under the run directory (its in-memory mode is capped
at 1 GiB); moto keeps everything in memory. All three run on this machine, so the
figures are of this machine's CPU and disk, not of a network link.

Prints a table, then one JSON line with the same figures. Exits 0 when every phase ran,
1 when one failed. The run directory under `--work` (default bench/out/) is removed at
the end unless `--keep`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import shutil
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.pool_ingest import dataset_script, make_dataset
from storage_pool import PoolConfig, StoragePool
from storage_pool.ingest import ingest_tree
from storage_pool.recovery_point import RecoveryPoint
from storage_pool.vault.azure import AzureBackend
from storage_pool.vault.backend import VaultBackend
from storage_pool.vault.folder import FolderBackend
from storage_pool.vault.pack import DEFAULT_PACK_SIZE
from storage_pool.vault.reader import VaultReader
from storage_pool.vault.s3 import S3Backend
from storage_pool.vault.scratch import ScratchBudget
from storage_pool.vault.uploader import OnlineBackupResult, copy_recovery_point
from storage_pool.vault.vault import Vault
from tests.support.azurite import AZURITE_BIN, Azurite
from tests.support.moto import ACCESS_KEY, MOTO_BIN, SECRET_KEY, Moto

HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024
PASSPHRASE = "online benchmark passphrase, not a secret"
BACKENDS = ("folder", "azure", "s3")
MIN_PACK = 4 * MiB


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(msg, flush=True)


class DiskAzurite(Azurite):
    """Azurite persisting to `location`: in memory it holds at most 1 GiB of extents."""

    def __init__(self, location: Path) -> None:
        super().__init__()
        self.location = location

    def argv(self) -> list[str]:
        argv = super().argv()
        i = argv.index("--inMemoryPersistence")
        argv[i : i + 3] = ["--location", str(self.location)]  # drops --extentMemoryLimit N
        return argv


@dataclass
class Figures:
    backend: str
    online_seconds: float
    online_logical_mib_s: float
    online_upload_mib_s: float
    bytes_uploaded: int
    packs: int
    scratch_bound: int
    scratch_high_water: int
    plain_seconds: float
    plain_mib_s: float
    ratio: float
    restore_seconds: float
    restore_mib_s: float
    chunks_fetched: int


@asynccontextmanager
async def service(kind: str, run: Path) -> AsyncIterator[Callable[[str], VaultBackend]]:
    """Start what `kind` needs; yield a factory of backends on a named container."""
    if kind == "folder":
        yield lambda name: FolderBackend(run / "vaults" / name)
        return
    if kind == "azure":
        if not os.access(AZURITE_BIN, os.X_OK):
            raise BenchError(f"Azurite is not installed at {AZURITE_BIN} (run: make test-tools)")
        (run / "azurite").mkdir()
        azurite = DiskAzurite(run / "azurite")
        await azurite.start()
        try:
            yield lambda name: AzureBackend(
                name, connection_string=azurite.connection_string(), max_concurrency=4
            )
        finally:
            await azurite.stop()
            azurite.close_log()
        return
    if kind == "s3":
        if not os.access(MOTO_BIN, os.X_OK):
            raise BenchError(f"moto_server is not installed at {MOTO_BIN} (run: make test-tools)")
        moto = Moto()
        await moto.start()
        try:
            yield lambda name: S3Backend(
                name,
                endpoint_url=moto.endpoint_url,
                access_key_id=ACCESS_KEY,
                secret_access_key=SECRET_KEY,
                max_concurrency=4,
            )
        finally:
            await moto.stop()
            moto.close_log()
        return
    raise ValueError(kind)


def write_plain_files(folder: Path, total: int, size: int) -> list[tuple[Path, bytes]]:
    """Pack-sized files of random bytes adding up to `total`, with their SHA-256."""
    folder.mkdir(parents=True)
    out = []
    left, i = total, 0
    while left > 0:
        n = min(size, left)
        data = os.urandom(n)
        path = folder / f"plain-{i:05d}.bin"
        path.write_bytes(data)
        out.append((path, hashlib.sha256(data).digest()))
        left -= n
        i += 1
    return out


async def plain_upload(
    backend: VaultBackend, files: list[tuple[Path, bytes]], parallelism: int
) -> float:
    slots = asyncio.Semaphore(parallelism)

    async def one(path: Path, sha: bytes) -> None:
        async with slots:
            await backend.put(f"plain/{path.name}", path, sha256=sha)

    await asyncio.to_thread(os.sync)
    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for path, sha in files:
            group.create_task(one(path, sha))
    return time.perf_counter() - started


async def bench_backend(
    kind: str,
    run: Path,
    pool: StoragePool,
    rp: RecoveryPoint,
    *,
    scratch_bound: int,
    pack_size: int,
    parallelism: int,
    repeat: int,
) -> Figures:
    work = run / kind
    work.mkdir()
    async with service(kind, run) as make:
        # Online and plain runs alternate so that both see the same spells of load on a
        # shared machine; the medians are compared.
        onlines: list[float] = []
        plains: list[float] = []
        result: OnlineBackupResult | None = None
        for i in range(repeat):
            backend = make(f"benchvault{i}")
            vault = await Vault.create(backend, PASSPHRASE, cache_dir=work / f"cache{i}")
            budget = ScratchBudget(scratch_bound)
            await asyncio.to_thread(os.sync)
            log(
                f"[{kind}] online copy {i + 1}/{repeat} (scratch bound"
                f" {scratch_bound / MiB:.0f} MiB) ..."
            )
            started = time.perf_counter()
            result = await copy_recovery_point(
                pool,
                rp,
                vault,
                work / "scratch",
                budget,
                parallelism=parallelism,
                pack_size=pack_size,
            )
            onlines.append(time.perf_counter() - started)
            await vault.close()
            await backend.close()

            log(f"[{kind}] plain upload {i + 1}/{repeat} of {result.bytes_uploaded / MiB:.0f} MiB")
            files = await asyncio.to_thread(
                write_plain_files, work / "plain", result.bytes_uploaded, pack_size
            )
            plain_backend = make(f"benchplain{i}")
            await plain_backend.ensure_container()
            plains.append(await plain_upload(plain_backend, files, parallelism))
            await plain_backend.close()
            await asyncio.to_thread(shutil.rmtree, work / "plain")
        assert result is not None
        online, plain = statistics.median(onlines), statistics.median(plains)

        log(f"[{kind}] restore into a fresh pool ...")
        restore_backend = make("benchvault0")
        fresh = await Vault.open(restore_backend, PASSPHRASE, cache_dir=work / "restore-cache")
        new_pool = await StoragePool.create(work / "restored-pool")
        try:
            started = time.perf_counter()
            reader = VaultReader(fresh)
            (orp,) = (await reader.list_online_rps()).rps
            reseed = await reader.restore_into_pool(new_pool, orp)
            restore = time.perf_counter() - started
            if await new_pool.get_recovery_point(rp.id) != rp:
                raise BenchError(f"{kind}: the restored RP record differs from the source")
            if reseed.chunks_fetched != result.chunks_total:
                raise BenchError(
                    f"{kind}: restored {reseed.chunks_fetched} chunks of {result.chunks_total}"
                )
        finally:
            await new_pool.close()
            await fresh.close()
            await restore_backend.close()

    up_mib = result.bytes_uploaded / MiB
    return Figures(
        backend=kind,
        online_seconds=online,
        online_logical_mib_s=rp.logical_bytes / MiB / online,
        online_upload_mib_s=up_mib / online,
        bytes_uploaded=result.bytes_uploaded,
        packs=result.packs_uploaded,
        scratch_bound=scratch_bound,
        scratch_high_water=result.scratch_high_water,
        plain_seconds=plain,
        plain_mib_s=up_mib / plain,
        ratio=(up_mib / online) / (up_mib / plain),
        restore_seconds=restore,
        restore_mib_s=rp.logical_bytes / MiB / restore,
        chunks_fetched=reseed.chunks_fetched,
    )


def table(rows: list[Figures], logical: int) -> str:
    head = (
        f"{'backend':8} {'online s':>9} {'logical MiB/s':>14} {'upload MiB/s':>13}"
        f" {'plain MiB/s':>12} {'ratio':>6} {'scratch hw/bound MiB':>21}"
        f" {'restore s':>10} {'restore MiB/s':>14}"
    )
    lines = [f"RP logical size {logical / MiB:.0f} MiB", head]
    for f in rows:
        lines.append(
            f"{f.backend:8} {f.online_seconds:9.1f} {f.online_logical_mib_s:14.1f}"
            f" {f.online_upload_mib_s:13.1f} {f.plain_mib_s:12.1f} {f.ratio:6.2f}"
            f" {f.scratch_high_water / MiB:>10.1f}/{f.scratch_bound / MiB:<10.1f}"
            f" {f.restore_seconds:10.1f} {f.restore_mib_s:14.1f}"
        )
    return "\n".join(lines)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=2048, help="mixed dataset size (seed 1)")
    ap.add_argument("--scratch-pct", type=float, default=5.0, help="scratch bound, %% of data")
    ap.add_argument("--parallelism", type=int, default=4, help="concurrent uploads")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset")
    ap.add_argument("--work", type=Path, default=HERE / "out", help="run directory parent")
    ap.add_argument("--keep", action="store_true", help="keep dataset, pools and vaults")
    ap.add_argument(
        "--repeat", type=int, default=1, help="alternate online and plain runs N times (median)"
    )
    args = ap.parse_args()
    kinds = [k for k in args.backends.split(",") if k]
    if unknown := set(kinds) - set(BACKENDS):
        ap.error(f"unknown backends {sorted(unknown)}; choose from {BACKENDS}")

    run = args.work / f"online-{time.strftime('%Y%m%dT%H%M%S')}"
    run.mkdir(parents=True)
    for old in args.work.glob("online-*"):
        if old != run:
            shutil.rmtree(old, ignore_errors=True)
    ok = False
    try:
        log(f"dataset: {args.size_mb} MiB mixed, seed 1 ({dataset_script()})")
        await asyncio.to_thread(
            make_dataset, run / "mixed", "--size-mb", str(args.size_mb), "--seed", "1"
        )
        pool = await StoragePool.create(run / "pool", PoolConfig())
        started = time.perf_counter()
        rp, _ = await ingest_tree(pool, "bench", run / "mixed", workers=2)
        log(f"ingest: {rp.logical_bytes / MiB:.0f} MiB in {time.perf_counter() - started:.1f}s")
        bound = int(rp.logical_bytes * args.scratch_pct / 100)
        # A pack must fit the bound with room for the uploads in flight.
        pack_size = max(MIN_PACK, min(DEFAULT_PACK_SIZE, bound // (args.parallelism + 1)))
        log(f"pack size {pack_size / MiB:.1f} MiB, parallelism {args.parallelism}")
        rows = []
        try:
            for kind in kinds:
                rows.append(
                    await bench_backend(
                        kind,
                        run,
                        pool,
                        rp,
                        scratch_bound=bound,
                        pack_size=pack_size,
                        parallelism=args.parallelism,
                        repeat=max(1, args.repeat),
                    )
                )
        finally:
            await pool.close()
        log("")
        log(table(rows, rp.logical_bytes))
        within = all(f.scratch_high_water <= f.scratch_bound for f in rows)
        log(f"scratch high-water within its bound on every backend: {within}")
        log(f"online/plain >= 0.8 on every backend: {all(f.ratio >= 0.8 for f in rows)}")
        figures = {
            "size_mb": args.size_mb,
            "logical_bytes": rp.logical_bytes,
            "pack_size": pack_size,
            "parallelism": args.parallelism,
            "repeat": max(1, args.repeat),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "backends": {
                f.backend: {
                    k: round(v, 3) if isinstance(v, float) else v for k, v in vars(f).items()
                }
                for f in rows
            },
        }
        print(json.dumps(figures, sort_keys=True), flush=True)
        ok = within
    except (BenchError, OSError) as err:
        print(f"benchmark failed: {err}", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(run, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
