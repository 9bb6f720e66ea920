"""Re-seeding one RP from the vault into a fresh pool (server/cloud_restore.py), on a
real folder vault: only what the pool lacks is fetched, the catalog gets the RP row, a
tampered pack fails the re-seed with nothing committed."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.cloud_restore import disk_copy_gone, find_online_rp, reseed
from server.vault_sync import sync_registered
from storage_pool.errors import RecoveryPointNotFoundError
from storage_pool.vault.format_errors import TamperedObjectError
from storage_pool.vault.reader import ChunkNotInVaultError
from tests.unit.pool.file_backup import read_back
from tests.unit.pool.pool_opener import PoolOpener
from tests.unit.server.catalog_fixture import FakeClock
from tests.unit.server.cloud_fixture import (
    agent_and_source,
    backup,
    go_online,
    new_vault,
    register,
    site,
)
from tests.unit.vault.online_support import tree


def _packs(vault_root: Path, skip: set[str]) -> list[Path]:
    """The biggest objects of the vault other than `skip`: the packs."""
    files = [p for p in (vault_root / "data").rglob("*") if p.is_file() and p.name not in skip]
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


async def test_reseed_on_a_fresh_server_restores_the_rp(
    tmp_path: Path, pools: PoolOpener, clock: FakeClock
) -> None:
    vault_root = tmp_path / "vault"
    files = tree(3, files=4, size=60_000)
    async with site(tmp_path, pools, "a", clock) as a:
        creds = await new_vault(a, vault_root)
        await register(a, creds)
        agent, ds = await agent_and_source(a.catalog, "web01")
        rp = await backup(a, agent, ds, files)
        row = await go_online(a, rp, tmp_path / "scratch")
        # On the server that has the disk copy, nothing is gone.
        assert not await disk_copy_gone(a.catalog, a.pool, rp.id)

    async with site(tmp_path, pools, "b", clock) as b:
        await register(b, creds)
        await sync_registered(b.registry, b.catalog)
        # By the online RP's id or by the disk RP's it copies.
        found = await find_online_rp(b.catalog, rp.id)
        assert found is not None and found.id == row.id
        assert await disk_copy_gone(b.catalog, b.pool, rp.id)
        assert await disk_copy_gone(b.catalog, b.pool, row.id)

        outcome = await reseed(b.registry, b.pool, b.catalog, found)
        assert outcome.recovery_point == rp
        assert outcome.result.chunks_fetched > 0 and not outcome.result.already_present
        assert await read_back(b.pool, await b.pool.get_recovery_point(rp.id)) == files
        disk_row = await b.catalog.get_recovery_point(rp.id)
        assert disk_row.data_source_id == ds.id
        assert not await disk_copy_gone(b.catalog, b.pool, rp.id)

        twice = await reseed(b.registry, b.pool, b.catalog, found)
        assert twice.result.already_present and twice.result.chunks_fetched == 0


async def test_tampered_pack_fails_the_reseed_and_commits_nothing(
    tmp_path: Path, pools: PoolOpener, clock: FakeClock
) -> None:
    vault_root = tmp_path / "vault"
    async with site(tmp_path, pools, "a", clock) as a:
        creds = await new_vault(a, vault_root)
        await register(a, creds)
        agent, ds = await agent_and_source(a.catalog, "web01")
        rp = await backup(a, agent, ds, tree(4, files=4, size=60_000))
        row = await go_online(a, rp, tmp_path / "scratch")

    pack = _packs(vault_root, {row.id})[0]
    data = bytearray(pack.read_bytes())
    data[len(data) // 3] ^= 0x40
    pack.write_bytes(bytes(data))

    async with site(tmp_path, pools, "b", clock) as b:
        await register(b, creds)
        await sync_registered(b.registry, b.catalog)
        found = await find_online_rp(b.catalog, row.id)
        assert found is not None
        with pytest.raises((TamperedObjectError, ChunkNotInVaultError)):
            await reseed(b.registry, b.pool, b.catalog, found)
        with pytest.raises(RecoveryPointNotFoundError):
            await b.pool.get_recovery_point(rp.id)
        assert await b.catalog.list_recovery_points() == []
