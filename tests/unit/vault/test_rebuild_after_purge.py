"""A location cache rebuilt after a purge never makes a backup pin a segment naming a purged
pack (vault.py `rebuild_cache`): real pool, real folder vault, restore into a fresh pool."""

from __future__ import annotations

import shutil
from pathlib import Path

from storage_pool import ChunkerParams, PoolConfig, StoragePool
from storage_pool.recovery_point import RecoveryPoint
from storage_pool.vault.folder import FolderBackend
from storage_pool.vault.index_segment import IndexSegment
from storage_pool.vault.reader import VaultReader
from storage_pool.vault.scratch import ScratchBudget
from storage_pool.vault.uploader import copy_recovery_point
from storage_pool.vault.vault import Vault
from storage_pool.vault.vault_gc import GRACE_NS, apply_retention, purge
from tests.unit.pool.file_backup import backup_files, read_back
from tests.unit.pool.pool_opener import PoolOpener
from tests.unit.pool.sample_data import random_bytes
from tests.unit.vault.online_support import KiB, create_folder_vault, open_vault

PACK = 256 * KiB
T0 = 1_700_000_000 * 1_000_000_000
SMALL_CHUNKS = PoolConfig(
    chunker=ChunkerParams(min_size=16 * KiB, avg_size=64 * KiB, max_size=256 * KiB)
)


def files_of(seed: int, count: int) -> dict[bytes, bytes]:
    return {f"f{i:02d}".encode(): random_bytes(40 * KiB, seed * 1000 + i) for i in range(count)}


async def copy(pool: StoragePool, rp: RecoveryPoint, vault: Vault, tmp: Path, now: int) -> str:
    result = await copy_recovery_point(
        pool, rp, vault, tmp / "scratch", ScratchBudget(4 * PACK), pack_size=PACK,
        now_ns=lambda: now,
    )  # fmt: skip
    return result.manifest_name


async def segments_naming_missing_packs(vault: Vault, names: list[str]) -> list[str]:
    packs = set((await vault.scan()).packs)
    bad = []
    for name in names:
        segment = IndexSegment.open(vault.cipher, name, await vault.backend.get(name))
        if any(loc.pack_name not in packs for loc in segment.locations):
            bad.append(name)
    return bad


async def test_backup_after_purge_and_cache_rebuild_restores_byte_identical(
    pools: PoolOpener, tmp_path: Path
) -> None:
    pool = await pools.create(config=SMALL_CHUNKS)
    root, cache_dir = tmp_path / "vault", tmp_path / "cache"
    vault = await create_folder_vault(root, cache_dir)
    files1, files2 = files_of(1, 8), files_of(2, 8)
    files2[b"f00"] = files1[b"f00"]  # rp2 keeps rp1's first pack alive, not its last
    rp1, _, _ = await backup_files(pool, "ds", files1)
    rp2, _, _ = await backup_files(pool, "ds", files2)
    await copy(pool, rp1, vault, tmp_path, T0)
    await copy(pool, rp2, vault, tmp_path, T0)
    await apply_retention(vault, {"ds": {rp2.id}}, now_ns=T0)
    done = await purge(vault, now_ns=T0 + GRACE_NS)
    assert done.packs_deleted  # rp1's own pack went
    listing = await vault.scan()
    # The case under test: a segment still in the vault names a purged pack.
    assert await segments_naming_missing_packs(vault, sorted(listing.segments))

    # The cache is lost and rebuilt from the vault alone, then rp1 is copied again.
    await vault.close()
    shutil.rmtree(cache_dir)
    vault = await open_vault(FolderBackend(root), cache_dir)
    await vault.rebuild_cache()
    later = T0 + GRACE_NS + 1
    again = await copy(pool, rp1, vault, tmp_path, later)
    manifest, _ = await vault.open_manifest(again)
    pinned = [ref.name for ref in manifest.index_segments]
    assert await segments_naming_missing_packs(vault, pinned) == []
    await vault.close()

    fresh = await open_vault(FolderBackend(root), None)
    reader = VaultReader(fresh)
    orp = next(r for r in (await reader.list_online_rps()).rps if r.name == again)
    target = await pools.create("restored")
    await reader.restore_into_pool(target, orp)
    assert await read_back(target, await target.get_recovery_point(rp1.id)) == files1
    await fresh.close()
