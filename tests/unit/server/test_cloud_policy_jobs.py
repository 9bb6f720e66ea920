"""The cloud policy in the agent job engine (server/jobs.py through server/cloud_gate.py):
refused starts change nothing, a queued job refused before dispatch fails with the reason,
a state change stops running jobs (failed, not cancelled; the backup's upload session is
aborted so no RP appears), the scheduler stores a refused slot as a failed job, and the
REST API answers 409 (CLI exit 1). Real catalog, pool, data plane and aiohttp app; the bus
is a recorder of what would be published."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from agent import protocol as p
from server.app import make_app
from server.catalog import Catalog, JobState
from server.catalog_rows import AgentRow, DataSourceRow
from server.cli.main import main
from server.cloud_gate import CloudGate
from server.cloud_status import CloudPolicyRefused, Connectivity
from server.config import load_server_config
from server.context import ServerContext
from server.data_plane import BackupSession, DataPlane
from server.jobs import JobLimits, JobManager
from server.policy import DiskPolicy, OnlinePolicy
from server.protection import backup_group
from storage_pool import RecoveryPoint, StoragePool
from storage_pool.errors import SessionError
from storage_pool.vault.header import VaultState
from tests.unit.pool.pool_opener import PoolOpener
from tests.unit.server.catalog_fixture import T0, FakeClock
from tests.unit.server.cloud_fixture import Site, agent_and_source, backup
from tests.unit.server.cloud_policy_fixture import (
    ACTIVE,
    DEPROVISIONED,
    EXPIRED,
    LOST,
    Cloud,
    cloud_status,
)
from tests.unit.server.schedule_fixture import HOUR, Sent, world_at
from tests.unit.server.vault_fixture import registry

TOKEN = "operator-token-policy"
S1 = T0 + 2800  # the first hourly slot of group "pg" after T0 (tests/unit/server/test_scheduler.py)


def sent_of(sent: Sent, mtype: str) -> list[p.Message]:
    return [m for _, m in sent.messages if m.type == mtype]


@dataclass
class World:
    catalog: Catalog
    pool: StoragePool
    clock: FakeClock
    sent: Sent
    cloud: Cloud
    gate: CloudGate
    plane: DataPlane
    jobs: JobManager
    ctx: ServerContext
    agent: AgentRow
    ds: DataSourceRow
    rp: RecoveryPoint

    async def accepted(self, job_id: str) -> None:
        msg = p.Message(p.EVENT_ACCEPTED, self.agent.id, {}, job_id=job_id)
        await self.jobs.agent_event(self.agent.id, msg)

    async def result(self, job_id: str, status: str) -> None:
        msg = p.Message(p.EVENT_RESULT, self.agent.id, {"status": status}, job_id=job_id)
        await self.jobs.agent_event(self.agent.id, msg)

    def restore_params(self, **extra: object) -> dict[str, object]:
        return {
            "rp_id": self.rp.id,
            "data_source_id": self.ds.id,
            "source_agent_id": self.agent.id,
            "items": [],
            "target_path": "/restore",
            "conflict": "rename",
            **extra,
        }


@pytest.fixture
async def world(
    tmp_path: Path, catalog: Catalog, clock: FakeClock, pools: PoolOpener
) -> AsyncIterator[World]:
    pool = await pools.create("policy-pool")
    config = load_server_config(None, overrides={"server.data_dir": str(tmp_path / "data")})
    ctx = ServerContext(
        config=config,
        catalog=catalog,
        pool=pool,
        operator_token=TOKEN,
        ca_pem=b"",
        mqtt_url="mqtt://127.0.0.1:1",
        server_url="http://127.0.0.1:1",
        clock=clock,
    )
    plane = DataPlane(ctx)
    cloud = Cloud(ACTIVE)
    sent = Sent()
    jobs = JobManager(catalog, sent, JobLimits(4, 600.0), clock=clock, on_final=plane.job_ended)
    gate = CloudGate(cloud, jobs=jobs)
    ctx.jobs, ctx.cloud_gate, jobs.gate = jobs, gate, gate
    agent, ds = await agent_and_source(catalog, "web01")
    site = Site(tmp_path, catalog, pool, registry(tmp_path / "data", clock))
    rp = await backup(site, agent, ds, {b"srv/a.txt": b"hello" * 1000})
    await jobs.agent_state(agent.id, True, [])
    yield World(catalog, pool, clock, sent, cloud, gate, plane, jobs, ctx, agent, ds, rp)


async def open_session(w: World, job_id: str) -> BackupSession:
    """What POST /sessions does for the running backup `job_id`: a pool session with some
    chunks stored, registered with the data plane."""
    session = w.pool.session(w.ds.id, parent=w.rp.id)
    await session.put_data([os.urandom(50_000), os.urandom(60_000)])
    bs = BackupSession("sid-1", w.agent.id, job_id, w.ds.id, session, None)
    w.plane.sessions[bs.id] = bs
    return bs


async def test_refused_starts_name_the_states_and_change_nothing(world: World) -> None:
    w = world
    w.cloud.status = EXPIRED
    with pytest.raises(
        CloudPolicyRefused,
        match="backup to disk stopped by the cloud policy: connectivity connected, vault expired",
    ):
        await w.jobs.start_backup(w.ds.id)
    w.cloud.status = DEPROVISIONED
    with pytest.raises(CloudPolicyRefused, match=r"restore from disk .* vault deprovisioned"):
        await w.jobs.start_restore(w.agent.id, w.restore_params())
    with pytest.raises(CloudPolicyRefused, match=r"restore from cloud .* vault deprovisioned"):
        await w.jobs.start_restore(w.agent.id, w.restore_params(from_cloud=True), hold=True)
    w.cloud.status = LOST
    with pytest.raises(CloudPolicyRefused, match="connectivity lost, vault active"):
        await backup_group(w.catalog, w.jobs, await _group(w))
    await w.jobs.tick()
    assert await w.catalog.list_jobs() == []
    assert w.sent.messages == []
    # Restores are allowed while the vault is only expired or out of reach.
    for status in (EXPIRED, LOST):
        w.cloud.status = status
        job = await w.jobs.start_restore(w.agent.id, w.restore_params())
        assert job.state is JobState.QUEUED
        await w.jobs.cancel(job.id)


async def _group(w: World) -> str:
    group = await w.catalog.create_group("pg", DiskPolicy(), OnlinePolicy(), [w.ds.id])
    return group.id


async def test_a_job_refused_before_dispatch_fails_with_the_reason(world: World) -> None:
    w = world
    await w.jobs.agent_state(w.agent.id, False, [])
    job = await w.jobs.start_backup(w.ds.id)  # queued while allowed; the agent is away
    w.cloud.status = LOST  # no callback: the dispatch asks again
    await w.jobs.agent_state(w.agent.id, True, [])
    await w.jobs.tick()
    assert sent_of(w.sent, p.CMD_BACKUP) == []
    done = await w.catalog.get_job(job.id)
    assert done.state is JobState.FAILED and done.retryable is False
    assert done.error is not None
    assert "backup to disk stopped by the cloud policy: connectivity lost, vault active" in (
        done.error
    )
    assert "no successful contact for 16.0 days" in done.error


async def test_turning_state_stops_a_running_backup_and_no_rp_appears(world: World) -> None:
    w = world
    job = await w.jobs.start_backup(w.ds.id)
    restore = await w.jobs.start_restore(w.agent.id, w.restore_params())
    await w.jobs.tick()
    await w.accepted(job.id)
    await w.accepted(restore.id)
    bs = await open_session(w, job.id)

    await w.cloud.turn(EXPIRED, w.gate)

    stopped = await w.catalog.get_job(job.id)
    assert stopped.state is JobState.FAILED and stopped.retryable is False
    assert stopped.error == (
        "backup to disk stopped by the cloud policy: connectivity connected, vault expired"
    )
    (cancel,) = sent_of(w.sent, p.CMD_CANCEL)
    assert cancel.body == {"job_id": job.id}
    # The upload session went with the job: nothing of it can become an RP.
    assert w.plane.sessions == {} and bs.session.state == "aborted"
    with pytest.raises(SessionError, match="is aborted"):
        await bs.session.commit({})
    # The agent's own report afterwards changes nothing: the first final state stands.
    await w.result(job.id, "cancelled")
    assert (await w.catalog.get_job(job.id)).error == stopped.error
    assert [r.id for r in await w.pool.list_recovery_points(w.ds.id)] == [w.rp.id]
    assert [r.id for r in await w.catalog.list_recovery_points()] == [w.rp.id]
    # Restores are still allowed with an expired vault: the running one goes on.
    assert (await w.catalog.get_job(restore.id)).state is JobState.RUNNING


async def test_deprovisioned_stops_restores_and_queued_backups(world: World) -> None:
    w = world
    restore = await w.jobs.start_restore(w.agent.id, w.restore_params())
    await w.jobs.tick()
    await w.accepted(restore.id)
    await w.jobs.agent_state(w.agent.id, False, [])
    queued = await w.jobs.start_backup(w.ds.id)
    await w.cloud.turn(DEPROVISIONED, w.gate)
    for job_id, what in ((restore.id, "restore from disk"), (queued.id, "backup to disk")):
        job = await w.catalog.get_job(job_id)
        assert job.state is JobState.FAILED, job
        assert job.error is not None and job.error.startswith(f"{what} stopped by the cloud")
        assert "vault deprovisioned" in job.error and "online RPs are marked deleted" in job.error
    # The running restore's agent is told to stop; the never-dispatched backup needs nothing.
    assert [m.job_id for m in sent_of(w.sent, p.CMD_CANCEL)] == [restore.id]


async def test_a_held_cloud_restore_is_a_restore_from_cloud_until_released(world: World) -> None:
    w = world
    w.cloud.status = cloud_status(Connectivity.CONNECTED, VaultState.ACTIVE)
    held = await w.jobs.start_restore(w.agent.id, w.restore_params(from_cloud=True), hold=True)
    phase = asyncio.create_task(asyncio.Event().wait(), name="reseed-stand-in")
    w.jobs.hold_task(held.id, phase)
    assert w.jobs.is_held(held.id)
    # No vault any more: a restore from cloud is refused, one from disk is not.
    await w.cloud.turn(cloud_status(Connectivity.NOT_REGISTERED, None), w.gate)
    job = await w.catalog.get_job(held.id)
    assert job.state is JobState.FAILED
    assert job.error == "restore from cloud refused: no vault registered"
    await asyncio.gather(phase, return_exceptions=True)
    assert phase.cancelled()
    assert w.sent.messages == []  # never dispatched: the agent has nothing to stop

    # Released after its re-seed, the agent restores from the pool: a restore from disk,
    # which no vault does not stop.
    w.cloud.status = ACTIVE
    params = w.restore_params(from_cloud=True)
    released = await w.jobs.start_restore(w.agent.id, params, hold=True)
    w.jobs.release_held(released.id)
    await w.jobs.tick()
    await w.accepted(released.id)
    assert not w.jobs.is_held(released.id)
    await w.cloud.turn(cloud_status(Connectivity.NOT_REGISTERED, None), w.gate)
    await w.jobs.tick()
    assert (await w.catalog.get_job(released.id)).state is JobState.RUNNING
    assert sent_of(w.sent, p.CMD_CANCEL) == []


async def test_a_refused_slot_is_a_failed_job_never_retried(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with world_at(tmp_path, clock) as w:
        cloud = Cloud(LOST)
        w.jobs.gate = CloudGate(cloud, jobs=w.jobs)
        w.at(S1 + 1)
        (job,) = await w.tick()
        assert job.state is JobState.FAILED and not job.retryable
        assert job.error is not None and "connectivity lost, vault active" in job.error
        assert job.trigger == "schedule" and job.scheduled_for == S1
        w.at(S1 + HOUR / 2)  # past any retry backoff, before the next slot
        assert await w.tick() == []
        cloud.status = ACTIVE
        w.at(S1 + HOUR + 1)
        (job,) = await w.tick()
        assert job.state is JobState.QUEUED and job.scheduled_for == S1 + HOUR


async def test_the_api_answers_409_and_the_cli_exits_1(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    w = world
    w.cloud.status = EXPIRED
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with TestServer(make_app(w.ctx), host="127.0.0.1") as srv:
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            http.post(srv.make_url("/api/v1/jobs/backup"), json={"data_source": w.ds.id}) as r,
        ):
            assert r.status == 409
            assert (await r.json())["error"] == (
                "backup to disk stopped by the cloud policy: connectivity connected, vault expired"
            )
        w.cloud.status = DEPROVISIONED
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            http.post(srv.make_url("/api/v1/jobs/restore"), json={"rp_id": w.rp.id}) as r,
        ):
            assert r.status == 409
            assert "restore from disk stopped by the cloud policy" in (await r.json())["error"]
        url = str(srv.make_url("")).rstrip("/")
        capsys.readouterr()
        argv = ["Start-Backup", "-DataSource", w.ds.id, "-Server", url, "-Token", TOKEN]
        code = await asyncio.to_thread(main, argv)
        err = capsys.readouterr().err
    assert code == 1
    assert "backup to disk stopped by the cloud policy" in err and "vault deprovisioned" in err
    assert await w.catalog.list_jobs() == []
