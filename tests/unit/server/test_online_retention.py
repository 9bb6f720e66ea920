"""Online retention on the server (server/online_retention.py) with a real catalog, a real
pool on the fake clock and a real folder vault registered through `VaultRegistry`."""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import os
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from server.catalog import Catalog, JobKind, JobState
from server.online_backup import OnlineBackupRunner
from server.online_retention import run_cloud_gc
from server.policy import DiskPolicy, OnlinePolicy
from storage_pool import StoragePool
from storage_pool.vault.backend import PutData, VaultBackend
from storage_pool.vault.folder import FolderBackend
from storage_pool.vault.gfs import select_keep
from storage_pool.vault.keys import KDF_TESTING
from storage_pool.vault.reader import VaultReader
from storage_pool.vault.vault import Vault
from storage_pool.vault.vault_gc import GRACE_NS, live_rps_by_source
from tests.unit.pool.file_backup import read_back
from tests.unit.server.catalog_fixture import FakeClock
from tests.unit.server.cloud_fixture import online_config
from tests.unit.server.test_online_backup_runner import (
    Site,
    backup,
    register_vault,
    runner,
)
from tests.unit.server.vault_fixture import PASSPHRASE, registry
from tests.unit.vault.online_support import CountingBackend

DAY = 86400.0
KiB = 1 << 10


@pytest.fixture
async def site(tmp_path: Path, catalog: Catalog, clock: FakeClock) -> AsyncIterator[Site]:
    data_dir = tmp_path / "server"
    token, _ = await catalog.create_agent_token(600)
    agent, _, _ = await catalog.register_agent(token, None, "web01")
    ds = await catalog.add_data_source(agent.id, "files", ["/srv"], [])
    await catalog.create_group(
        "g1", DiskPolicy(), OnlinePolicy(enabled=True, daily=7, weekly=4, monthly=3), [ds.id]
    )
    # The pool dates RPs on the fake clock, so simulated days are days to GFS.
    pool = await StoragePool.create(tmp_path / "pool", clock=lambda: round(clock.now * 1e9))
    config = online_config(data_dir, **{"scheduler.timezone": "UTC"})
    yield Site(data_dir, catalog, pool, registry(data_dir, clock), config, agent, ds)
    await pool.close()


async def reader_of(root: Path) -> tuple[Vault, VaultReader]:
    vault = await Vault.open(FolderBackend(root), PASSPHRASE, min_params=KDF_TESTING)
    return vault, VaultReader(vault)


async def test_gfs_set_live_in_vault_and_catalog_then_purge_after_the_grace(  # noqa: PLR0915 - one story, day by day
    tmp_path: Path, site: Site, clock: FakeClock
) -> None:
    root = tmp_path / "vault"
    await register_vault(site, root)
    online = runner(site, clock)
    files: dict[str, dict[bytes, bytes]] = {}
    created: list[tuple[str, int]] = []
    try:
        for _ in range(10):
            clock.now += DAY
            content = {b"day.bin": os.urandom(64 * KiB)}
            rp = await backup(site, content)
            files[rp.id] = content
            created.append((rp.id, rp.created_ns))
            done = await online.run_job(await online.start(site.ds.id))
            assert done.state is JobState.SUCCEEDED, done.error
            assert done.result is not None and "retention_error" not in done.result

        expected = select_keep(
            created, daily=7, weekly=4, monthly=3, yearly=1, now=datetime.fromtimestamp(
                clock.now, UTC)
        )  # fmt: skip
        doomed = {rp_id for rp_id, _ in created} - expected
        assert doomed  # the test means something: day 1..3 are not all kept
        vault = await online.open_vault()
        assert {rp for rp, _ in (await live_rps_by_source(vault))[site.ds.id]} == expected
        live_rows = await site.catalog.list_online_rps(site.ds.id)
        assert {r.disk_rp_id for r in live_rows} == expected
        rows = await site.catalog.list_online_rps(site.ds.id, include_deleted=True)
        deleted_rows = [r for r in rows if r.deleted_at is not None]
        assert {r.disk_rp_id for r in deleted_rows} == doomed

        # Soft-deleted: still restorable byte-identical before the grace ends.
        victim = sorted(doomed)[0]
        fresh, reader = await reader_of(root)
        orp = next(r for r in (await reader.list_online_rps()).rps if r.id == victim)
        target = await StoragePool.create(tmp_path / "restored")
        await reader.restore_into_pool(target, orp)
        assert await read_back(target, await target.get_recovery_point(victim)) == files[victim]
        await target.close()
        await fresh.close()

        # Daily maintenance within the grace purges nothing.
        clock.now += DAY  # every deletion happened within the last 3 days
        early = await run_cloud_gc(site.catalog, online, site.config, clock)
        assert early is not None and early.state is JobState.SUCCEEDED, early
        assert early.kind is JobKind.GC and early.params == {"tier": "cloud"}
        assert early.result is not None and early.result["manifests_purged"] == 0
        names = {r.id for r in deleted_rows}
        assert names <= set((await vault.scan()).manifests)

        # After the grace the deleted manifests and their own packs are gone.
        clock.now += GRACE_NS / 1e9
        late = await run_cloud_gc(site.catalog, online, site.config, clock)
        assert late is not None and late.state is JobState.SUCCEEDED, late
        assert late.result is not None
        assert late.result["manifests_purged"] == len(doomed)
        assert late.result["packs_deleted"] > 0
        listing = await vault.scan()
        assert not names & set(listing.manifests)
        fresh, reader = await reader_of(root)
        listed = (await reader.list_online_rps()).rps
        assert {r.id for r in listed} == expected
        keep = max(expected)
        orp = next(r for r in listed if r.id == keep)
        target = await StoragePool.create(tmp_path / "restored2")
        await reader.restore_into_pool(target, orp)
        assert await read_back(target, await target.get_recovery_point(keep)) == files[keep]
        await target.close()
        await fresh.close()
    finally:
        await online.close()


WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="-")


class Tagged(CountingBackend):
    """A real backend that records which writer (context variable) made each call."""

    def __init__(self, inner: FolderBackend, log: list[str]) -> None:
        super().__init__(inner)
        self.log = log

    async def put(self, name: str, data: PutData, *, sha256: bytes | None = None) -> None:
        self.log.append(WHO.get())
        await asyncio.sleep(0)  # a chance for another writer to run, were there no lock
        await self.inner.put(name, data, sha256=sha256)

    async def get(self, name: str) -> bytes:
        self.log.append(WHO.get())
        await asyncio.sleep(0)
        return await self.inner.get(name)

    async def delete(self, name: str) -> None:
        self.log.append(WHO.get())
        await asyncio.sleep(0)
        await self.inner.delete(name)


async def test_online_job_and_purge_never_overlap(
    tmp_path: Path, site: Site, clock: FakeClock
) -> None:
    await register_vault(site, tmp_path / "vault")
    calls: list[str] = []

    def opener(spec: Mapping[str, Any]) -> VaultBackend:
        return Tagged(FolderBackend(Path(spec["path"])), calls)

    online: OnlineBackupRunner = runner(site, clock, opener=opener, retry=None)
    try:
        await backup(site, {b"a.bin": os.urandom(2 << 20)})
        first = await online.run_job(await online.start(site.ds.id))
        assert first.state is JobState.SUCCEEDED, first.error
        clock.now += DAY
        await backup(site, {b"a.bin": os.urandom(2 << 20)})
        job = await online.start(site.ds.id)
        calls.clear()

        async def as_writer(who: str, work: Any) -> Any:
            WHO.set(who)
            return await work

        done, gc = await asyncio.gather(
            as_writer("backup", online.run_job(job)),
            as_writer("gc", run_cloud_gc(site.catalog, online, site.config, clock)),
        )
        assert done.state is JobState.SUCCEEDED, done.error
        assert gc is not None and gc.state is JobState.SUCCEEDED, gc.error
        tagged = [w for w in calls if w != "-"]
        assert {"backup", "gc"} <= set(tagged)
        # One writer after the other: the tags form two runs, never interleaved.
        switches = sum(1 for a, b in itertools.pairwise(tagged) if a != b)
        assert switches == 1, tagged
    finally:
        await online.close()
