"""Filling a catalog from the vault (server/vault_sync.py) on a real folder vault and
real pools: a fresh server lists every online RP; missing manifests mark rows deleted;
a tampered manifest is refused and its row left alone."""

from __future__ import annotations

from pathlib import Path

from server.vault_sync import sync_registered
from storage_pool.vault.folder import FolderBackend
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


async def test_fresh_server_lists_every_online_rp(
    tmp_path: Path, pools: PoolOpener, clock: FakeClock
) -> None:
    vault_root = tmp_path / "vault"
    async with site(tmp_path, pools, "a", clock) as a:
        creds = await new_vault(a, vault_root)
        await register(a, creds)
        agent, ds = await agent_and_source(a.catalog, "web01")
        rp1 = await backup(a, agent, ds, tree(1, files=3, size=40_000))
        rp2 = await backup(a, agent, ds, tree(2, files=3, size=40_000))
        row1 = await go_online(a, rp1, tmp_path / "scratch")
        row2 = await go_online(a, rp2, tmp_path / "scratch")
        # The server that made them: the sync finds its own rows and changes nothing.
        own = await sync_registered(a.registry, a.catalog)
        assert (own.listed, own.added, own.marked_deleted) == (2, 0, 0)

    async with site(tmp_path, pools, "b", clock) as b:
        await register(b, creds)
        report = await sync_registered(b.registry, b.catalog)
        assert (report.listed, report.added, report.marked_deleted) == (2, 2, 0)
        assert (report.agents_created, report.data_sources_created) == (1, 1)
        assert not report.refused and not report.skipped
        rows = await b.catalog.list_online_rps()
        assert {r.id for r in rows} == {row1.id, row2.id}
        assert {r.disk_rp_id for r in rows} == {rp1.id, rp2.id}
        by_id = {r.id: r for r in rows}
        assert by_id[row2.id].logical_bytes == rp2.logical_bytes
        assert by_id[row2.id].source_created_at == rp2.created_ns / 1e9
        # The old agent is known but must register again; its data source kept its id.
        old_agent = await b.catalog.get_agent(agent.id)
        assert old_agent.needs_registration
        rebuilt = await b.catalog.get_data_source(ds.id)
        assert rebuilt.name == ds.name and list(rebuilt.paths) == ["/srv"]
        # The disk RPs are not in B's pool: no disk RP rows.
        assert await b.catalog.list_recovery_points() == []

        again = await sync_registered(b.registry, b.catalog)
        assert (again.listed, again.added, again.marked_deleted) == (2, 0, 0)
        assert (again.agents_created, again.data_sources_created) == (0, 0)

        # A manifest deleted from the vault: its row is marked deleted, the other stays.
        await FolderBackend(vault_root).delete(row1.id)
        lost = await sync_registered(b.registry, b.catalog)
        assert (lost.listed, lost.marked_deleted) == (1, 1)
        assert [r.id for r in await b.catalog.list_online_rps()] == [row2.id]
        gone = await b.catalog.get_online_rp(row1.id)
        assert gone.deleted_at is not None


async def test_tampered_manifest_is_refused_and_its_row_kept(
    tmp_path: Path, pools: PoolOpener, clock: FakeClock
) -> None:
    vault_root = tmp_path / "vault"
    async with site(tmp_path, pools, "a", clock) as a:
        creds = await new_vault(a, vault_root)
        await register(a, creds)
        agent, ds = await agent_and_source(a.catalog, "web01")
        row1 = await go_online(
            a, await backup(a, agent, ds, tree(1, files=2, size=20_000)), tmp_path / "s"
        )
        row2 = await go_online(
            a, await backup(a, agent, ds, tree(2, files=2, size=20_000)), tmp_path / "s"
        )
        # Swap: the bytes of one manifest under the other's name.
        folder = FolderBackend(vault_root)
        data = await folder.get(row2.id)
        await folder.put(row1.id, data)
        report = await sync_registered(a.registry, a.catalog)
        assert [name for name, _ in report.refused] == [row1.id]
        assert report.listed == 1 and report.marked_deleted == 0
        assert {r.id for r in await a.catalog.list_online_rps()} == {row1.id, row2.id}
