"""Helpers of the cloud-restore and vault-sync tests: a server's catalog, pool and
registered folder vault (test-only KDF parameters), and online RPs made with the engine
(`copy_recovery_point`), as the online-backup job will make them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.catalog import Catalog, recovery_point_labels
from server.catalog_online import OnlineRecoveryPointRow
from server.catalog_rows import AgentRow, DataSourceRow
from server.config import ServerConfig, load_server_config
from server.ids import DataSourceId
from server.vault_registry import VaultRegistry
from server.vault_sync import registered_vault
from storage_pool import RecoveryPoint, StoragePool
from storage_pool.vault.scratch import ScratchBudget
from storage_pool.vault.uploader import copy_recovery_point
from tests.unit.pool.file_backup import file_entries
from tests.unit.pool.pool_opener import PoolOpener
from tests.unit.server.catalog_fixture import FakeClock, opened
from tests.unit.server.vault_fixture import PASSPHRASE, folder_spec, registry

PACK = 256 * 1024
MiB = 1 << 20


def online_config(data_dir: Path, **extra: str) -> ServerConfig:
    """A server configuration for online-backup jobs: a small scratch floor, 1 MiB packs."""
    return load_server_config(
        None,
        overrides={
            "server.data_dir": str(data_dir),
            "scratch.min_bytes": str(4 * MiB),
            "online.pack_mib": "1",
            **extra,
        },
    )


@dataclass
class Site:
    """One backup server: its data dir, catalog, pool and vault registry."""

    data_dir: Path
    catalog: Catalog
    pool: StoragePool
    registry: VaultRegistry


@asynccontextmanager
async def site(base: Path, pools: PoolOpener, name: str, clock: FakeClock) -> AsyncIterator[Site]:
    data_dir = base / name
    data_dir.mkdir(parents=True)
    async with opened(data_dir / "catalog.sqlite", clock) as catalog:
        pool = await pools.create(f"{name}-pool")
        yield Site(data_dir, catalog, pool, registry(data_dir, clock))


async def new_vault(s: Site, vault_root: Path) -> dict[str, Any]:
    """New-Vault at `vault_root`: the credentials document."""
    return (await s.registry.new_vault(folder_spec(vault_root))).to_doc()


async def register(s: Site, credentials: Mapping[str, Any], passphrase: str = PASSPHRASE) -> None:
    await s.registry.register(dict(credentials), passphrase)


async def agent_and_source(catalog: Catalog, host: str) -> tuple[AgentRow, DataSourceRow]:
    token, _ = await catalog.create_agent_token(600)
    agent, _, _ = await catalog.register_agent(token, None, host)
    ds = await catalog.add_data_source(agent.id, "files", ["/srv"], [])
    return agent, ds


async def backup(
    s: Site, agent: AgentRow, ds: DataSourceRow, files: Mapping[bytes, bytes]
) -> RecoveryPoint:
    """A pool RP with the server's labels, and its catalog row."""
    chunker = s.pool.new_chunker()
    chunked = {p: [bytes(v) for v in chunker.cut(d)] for p, d in files.items()}
    async with s.pool.session(ds.id) as session:
        for pieces in chunked.values():
            await session.put_data(pieces)
        await session.add_entries(file_entries(chunked))
        rp = await session.commit(recovery_point_labels(agent, ds, None))
    await s.catalog.add_recovery_point(rp)
    return rp


async def go_online(s: Site, rp: RecoveryPoint, scratch: Path) -> OnlineRecoveryPointRow:
    """Copy `rp` to the registered vault and record its online-RP row."""
    async with registered_vault(s.registry) as vault:
        result = await copy_recovery_point(
            s.pool, rp, vault, scratch, ScratchBudget(4 * PACK), pack_size=PACK
        )
    return await s.catalog.add_online_rp(
        result.manifest_name,
        DataSourceId(rp.data_source),
        disk_rp_id=rp.id,
        source_created_at=rp.created_ns / 1e9,
        created_at=rp.created_ns / 1e9,
        logical_bytes=rp.logical_bytes,
    )
