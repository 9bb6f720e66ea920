"""Crash-test online writer: copies every RP of a pool into a folder vault, until killed.

Run as ``python -m tests.crash.online_writer POOL_DIR VAULT_DIR CACHE_DIR SCRATCH_DIR``.
Each put is delayed a little (a wrapper over the real folder backend) so that kills land
mid-upload. Prints ``done <rp id>`` after each RP is committed online.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from storage_pool import StoragePool
from storage_pool.vault.backend import PutData
from storage_pool.vault.folder import FolderBackend
from storage_pool.vault.scratch import ScratchBudget
from storage_pool.vault.uploader import copy_recovery_point
from tests.unit.vault.online_support import CountingBackend, open_vault

PACK = 128 * 1024


class SlowBackend(CountingBackend):
    async def put(self, name: str, data: PutData, *, sha256: bytes | None = None) -> None:
        await asyncio.sleep(0.05)
        await super().put(name, data, sha256=sha256)


async def amain(pool_dir: Path, vault_dir: Path, cache_dir: Path, scratch: Path) -> None:
    vault = await open_vault(SlowBackend(FolderBackend(vault_dir)), cache_dir)
    async with await StoragePool.open(pool_dir) as pool:
        for rp in await pool.list_recovery_points():
            await copy_recovery_point(
                pool, rp, vault, scratch, ScratchBudget(4 * PACK), pack_size=PACK, parallelism=2
            )
            print("done", rp.id, flush=True)
    await vault.close()


if __name__ == "__main__":
    asyncio.run(amain(*(Path(a) for a in sys.argv[1:5])))
