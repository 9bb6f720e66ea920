"""The cloud policy in online backups and restores from the cloud, on a real catalog, pool and
folder vault: refused starts create nothing, a queued online job refused before it runs
fails with the reason, a state change stops a running online backup between packs (failed,
the reason in its error) and the next job resumes without uploading a pack again, a refused
online slot is a failed job and an alert, a restore from the cloud is refused or stopped."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from server.alerts import AlertCenter
from server.catalog import JobKind, JobState
from server.catalog_rows import AgentRow, DataSourceRow
from server.cloud_gate import CloudGate
from server.cloud_restore import _TASKS, start_cloud_restore
from server.cloud_status import CloudPolicyRefused
from server.config import ServerConfig
from server.context import ServerContext
from server.jobs import JobLimits, JobManager
from server.online_backup import OnlineBackupRunner
from server.online_scheduler import ONLINE_BACKUP_NOT_STARTED, OnlineScheduler
from server.policy import DiskPolicy, OnlinePolicy
from server.scratch_bound import ScratchGuard
from server.vault_sync import sync_registered
from storage_pool.vault.backend import VaultBackend
from storage_pool.vault.folder import FolderBackend
from storage_pool.vault.scratch import scratch_usage
from tests.unit.pool.pool_opener import PoolOpener
from tests.unit.server.catalog_fixture import T0, FakeClock
from tests.unit.server.cloud_fixture import (
    MiB,
    Site,
    agent_and_source,
    backup,
    go_online,
    new_vault,
    online_config,
    register,
    site,
)
from tests.unit.server.cloud_policy_fixture import ACTIVE, DEPROVISIONED, EXPIRED, LOST, Cloud
from tests.unit.server.schedule_fixture import Sent
from tests.unit.vault.online_support import CountingBackend


@dataclass
class Online:
    site: Site
    config: ServerConfig
    agent: AgentRow
    ds: DataSourceRow
    cloud: Cloud
    gate: CloudGate

    def runner(self, clock: FakeClock, **kwargs: Any) -> OnlineBackupRunner:
        runner = OnlineBackupRunner(
            self.site.catalog,
            self.site.pool,
            self.site.registry,
            lambda: self.config,
            clock,
            scratch=ScratchGuard(self.site.catalog, None, lambda: self.config),
            gate=self.gate,
            **kwargs,
        )
        self.gate.online = runner
        return runner


@pytest.fixture
async def online(tmp_path: Path, pools: PoolOpener, clock: FakeClock) -> AsyncIterator[Online]:
    async with site(tmp_path, pools, "server", clock) as s:
        await register(s, await new_vault(s, tmp_path / "vault"))
        agent, ds = await agent_and_source(s.catalog, "web01")
        await backup(s, agent, ds, {b"srv/a.bin": os.urandom(8 * MiB)})
        config = online_config(s.data_dir, **{"scheduler.timezone": "UTC"})
        cloud = Cloud(ACTIVE)
        yield Online(s, config, agent, ds, cloud, CloudGate(cloud))


def counting(into: list[CountingBackend]) -> Any:
    def opener(spec: Mapping[str, Any]) -> VaultBackend:
        backend = CountingBackend(FolderBackend(Path(spec["path"])))
        into.append(backend)
        return backend

    return opener


async def test_refused_online_starts_create_nothing(online: Online, clock: FakeClock) -> None:
    o = online
    group = await o.site.catalog.create_group(
        "pg", DiskPolicy(), OnlinePolicy(enabled=True), [o.ds.id]
    )
    runner = o.runner(clock)
    try:
        for status, state in ((EXPIRED, "connectivity connected, vault expired"), (LOST, "lost")):
            o.cloud.status = status
            with pytest.raises(CloudPolicyRefused, match="backup to cloud stopped") as err:
                await runner.start(o.ds.id)
            assert state in str(err.value)
            with pytest.raises(CloudPolicyRefused, match=state):
                await runner.start_group(group.id)
        assert await runner.tick() == []
        assert await o.site.catalog.list_jobs() == []
    finally:
        await runner.close()


async def test_a_queued_online_job_refused_before_it_runs(online: Online, clock: FakeClock) -> None:
    o = online
    puts: list[CountingBackend] = []
    runner = o.runner(clock, opener=counting(puts))
    try:
        job = await runner.start(o.ds.id)
        o.cloud.status = DEPROVISIONED  # no callback: the start of the run asks again
        done = await runner.run_job(job)
    finally:
        await runner.close()
    assert done.state is JobState.FAILED and done.retryable is False
    assert done.error is not None
    assert done.error.startswith("backup to cloud stopped by the cloud policy")
    assert "vault deprovisioned" in done.error
    assert puts == []  # the vault was not even opened
    assert await o.site.catalog.list_online_rps(o.ds.id) == []


async def test_state_change_stops_a_running_online_backup_and_the_next_resumes(
    online: Online, clock: FakeClock
) -> None:
    o = online
    first: list[CountingBackend] = []
    runner = o.runner(clock, opener=counting(first))
    turned: list[asyncio.Task[None]] = []
    job = await runner.start(o.ds.id)

    def expire_after_a_pack(backend: CountingBackend) -> None:
        # The monitor's callback runs while later packs are in flight, once one is stored.
        if backend.puts and not turned:
            turned.append(asyncio.create_task(o.cloud.turn(EXPIRED, o.gate)))

    runner._opener = lambda spec: _hooked(counting(first)(spec), expire_after_a_pack)
    try:
        done = await runner.run_job(job)
    finally:
        await runner.close()
    await asyncio.gather(*turned)
    assert done.state is JobState.FAILED and done.retryable is False
    assert done.error == (
        "backup to cloud stopped by the cloud policy: connectivity connected, vault expired"
    )
    assert await o.site.catalog.list_online_rps(o.ds.id) == []
    assert scratch_usage(o.config.scratch_path) == 0
    uploaded = {name for b in first for name, _ in b.puts}
    assert uploaded  # some packs made it before the safe point

    o.cloud.status = ACTIVE
    second: list[CountingBackend] = []
    healthy = o.runner(clock, opener=counting(second))
    try:
        resumed = await healthy.run_job(await healthy.start(o.ds.id))
    finally:
        await healthy.close()
    assert resumed.state is JobState.SUCCEEDED, resumed.error
    assert not uploaded & {name for b in second for name, _ in b.puts}
    assert len(await o.site.catalog.list_online_rps(o.ds.id)) == 1


def _hooked(backend: CountingBackend, hook: Callable[[CountingBackend], None]) -> CountingBackend:
    backend.on_put = lambda: hook(backend)
    return backend


async def test_a_refused_online_slot_is_a_failed_job_and_an_alert(
    online: Online, clock: FakeClock
) -> None:
    o = online
    await o.site.catalog.create_group(
        "pg", DiskPolicy(), OnlinePolicy(enabled=True, times=("23:00",)), [o.ds.id]
    )
    runner = o.runner(clock)
    alerts = AlertCenter(o.site.catalog, lambda: "")
    scheduler = OnlineScheduler(o.site.catalog, runner, alerts, lambda: o.config, clock)
    try:
        o.cloud.status = LOST
        clock.now = T0 + 2800 + 1  # 23:00:01 UTC
        (job,) = await scheduler.tick()
        assert job.kind is JobKind.ONLINE_BACKUP and job.state is JobState.FAILED
        assert job.retryable is False and job.scheduled_for == T0 + 2800
        assert job.error is not None and "connectivity lost, vault active" in job.error
        (alert,) = await o.site.catalog.open_alerts_of_kind(ONLINE_BACKUP_NOT_STARTED)
        assert "connectivity lost" in alert.message
        assert await runner.tick() == []  # nothing queued to run
        clock.now += 3 * 3600  # past any retry backoff: a policy refusal is not retried
        assert await scheduler.tick() == []
    finally:
        await runner.close()
        await alerts.close(0)


async def test_restore_from_cloud_refused_then_stopped_while_reseeding(
    tmp_path: Path, pools: PoolOpener, clock: FakeClock
) -> None:
    vault_root = tmp_path / "vault"
    async with site(tmp_path, pools, "a", clock) as a:
        creds = await new_vault(a, vault_root)
        await register(a, creds)
        agent, ds = await agent_and_source(a.catalog, "web01")
        rp = await backup(a, agent, ds, {b"srv/f.txt": os.urandom(200_000)})
        await go_online(a, rp, tmp_path / "scratch")
    # A new server on the same vault: its pool has no disk copy, only the vault has one.
    async with site(tmp_path, pools, "b", clock) as b:
        await register(b, creds)
        await sync_registered(b.registry, b.catalog)
        cloud = Cloud(DEPROVISIONED)
        jobs = JobManager(b.catalog, Sent(), JobLimits(), clock=clock)
        gate = CloudGate(cloud, jobs=jobs)
        jobs.gate = gate
        ctx = ServerContext(
            config=online_config(b.data_dir),
            catalog=b.catalog,
            pool=b.pool,
            operator_token="",
            ca_pem=b"",
            mqtt_url="mqtt://127.0.0.1:1",
            server_url="http://127.0.0.1:1",
            jobs=jobs,
            clock=clock,
            cloud_gate=gate,
        )

        target, _ = await agent_and_source(b.catalog, "web02")  # registered: can restore

        async def restore() -> Any:
            return await start_cloud_restore(
                ctx,
                b.registry,
                rp.id,
                items=[],
                target_path="/restored",
                conflict="rename",
                target_agent=target.id,
            )

        with pytest.raises(
            CloudPolicyRefused, match=r"restore from cloud stopped .* deprovisioned"
        ):
            await restore()
        assert await b.catalog.list_jobs() == []

        cloud.status = ACTIVE
        job = await restore()
        assert job.state is JobState.RUNNING and jobs.is_held(job.id)
        await cloud.turn(DEPROVISIONED, gate)
        await asyncio.gather(*list(_TASKS), return_exceptions=True)
        stopped = await b.catalog.get_job(job.id)
        assert stopped.state is JobState.FAILED and stopped.retryable is False
        assert stopped.error is not None
        assert stopped.error.startswith("restore from cloud stopped by the cloud policy")
        assert await b.pool.list_recovery_points(ds.id) == []
