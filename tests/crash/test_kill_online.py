"""Online backup under kill -9: SIGKILL the uploader at random moments, then resume.

After the kills, an in-process resume must finish without re-uploading any pack the
vault already holds, and a fresh pool re-seeded from the vault alone must give back
the files byte for byte. STOCKADE_CRASH_SEED replays a run.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

import pytest

from storage_pool import ChunkerParams, PoolConfig, StoragePool
from storage_pool.vault.folder import FolderBackend
from storage_pool.vault.reader import VaultReader
from storage_pool.vault.scratch import ScratchBudget
from storage_pool.vault.uploader import copy_recovery_point
from tests.crash.test_kill_writer import crash_seed
from tests.unit.pool.file_backup import backup_files, read_back
from tests.unit.vault.online_support import (
    CountingBackend,
    create_folder_vault,
    open_vault,
    tree,
)

pytestmark = pytest.mark.crash

ROOT = Path(__file__).resolve().parents[2]
ITERATIONS = 10
KILL_AFTER_S = (0.3, 1.5)
SMALL_CHUNKS = PoolConfig(
    chunker=ChunkerParams(min_size=16 * 1024, avg_size=64 * 1024, max_size=256 * 1024)
)


async def test_kill_online_backup_then_resume(tmp_path: Path) -> None:
    rng = random.Random(crash_seed())
    pool_dir, vault_dir = tmp_path / "pool", tmp_path / "vault"
    cache, scratch = tmp_path / "cache", tmp_path / "scratch"
    files = [tree(10 + i, files=6, size=512 * 1024) for i in range(3)]
    async with await StoragePool.create(pool_dir, SMALL_CHUNKS) as pool:
        rps = [(await backup_files(pool, "ds", f))[0] for f in files]
    await (await create_folder_vault(vault_dir)).close()

    killed = 0
    for _ in range(ITERATIONS):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.crash.online_writer",
            str(pool_dir), str(vault_dir), str(cache), str(scratch),
            cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await asyncio.wait_for(proc.wait(), rng.uniform(*KILL_AFTER_S))
        except TimeoutError:
            proc.kill()
            await proc.wait()
            killed += 1
        else:
            assert proc.returncode == 0, (await proc.stderr.read()).decode()  # type: ignore[union-attr]

    assert killed > 0
    backend = CountingBackend(FolderBackend(vault_dir))
    held = {info.name async for info in backend.list("data/")}
    assert held  # the killed runs got packs into the vault: the resume must skip them
    vault = await open_vault(backend, cache)
    async with await StoragePool.open(pool_dir) as pool:
        for rp in rps:
            await copy_recovery_point(
                pool, rp, vault, scratch, ScratchBudget(1 << 20), pack_size=128 * 1024
            )
    assert [name for name, _ in backend.puts if name in held] == []
    assert not list(scratch.iterdir())
    await vault.close()

    fresh = await open_vault(FolderBackend(vault_dir), tmp_path / "cache2")
    reader = VaultReader(fresh)
    listing = await reader.list_online_rps()
    assert sorted(r.id for r in listing.rps) == sorted(rp.id for rp in rps)
    assert not listing.refused and not listing.missing
    async with await StoragePool.create(tmp_path / "pool2") as new_pool:
        for orp in listing.rps:
            await reader.restore_into_pool(new_pool, orp)
        for rp, expected in zip(rps, files, strict=True):
            assert await read_back(new_pool, await new_pool.get_recovery_point(rp.id)) == expected
    await fresh.close()
