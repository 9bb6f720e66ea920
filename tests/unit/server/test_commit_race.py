"""A backup's RP commit against its job's end (server/job_commits.py, server/data_plane.py):
a job ended before the commit gets no RP; a stop, a cloud-policy stop or a reserve failure
that comes while the manifest commit runs waits for it and keeps the RP, and the job says
so instead of "failed" beside an RP. Real catalog, pool, data plane behind a real aiohttp
server and the agent's HTTP calls; the pool's record write is held by fault injection
around the real one."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp.test_utils import BaseTestServer, TestServer

from agent import protocol as p
from server.app import DATA_PLANE_KEY, make_app
from server.catalog import Catalog, JobState
from server.catalog_rows import AgentRow, DataSourceRow
from server.cloud_gate import CloudGate
from server.config import load_server_config
from server.context import ServerContext
from server.data_plane import DataPlane
from server.ids import JobId
from server.jobs import JobLimits, JobManager
from storage_pool import RecoveryPoint, StoragePool, framing
from tests.unit.pool.file_backup import file_entries
from tests.unit.pool.pool_opener import PoolOpener
from tests.unit.pool.sample_data import random_bytes
from tests.unit.server.catalog_fixture import FakeClock
from tests.unit.server.cloud_policy_fixture import ACTIVE, EXPIRED, Cloud
from tests.unit.server.schedule_fixture import Sent

API = p.AGENT_API


class HeldCommit:
    """Fault injection over the real pool: writing a recovery point's record (the pool's
    commit point, in a pool thread) waits until `release` is set."""

    def __init__(self, pool: StoragePool) -> None:
        self.pool = pool
        self.real = pool.write_recovery_point
        self.entered = threading.Event()
        self.release = threading.Event()

    def __enter__(self) -> HeldCommit:
        self.pool.write_recovery_point = self._held  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.pool.write_recovery_point = self.real  # type: ignore[method-assign]

    def _held(self, rp: RecoveryPoint) -> None:
        self.entered.set()
        self.release.wait(30)
        self.real(rp)


@dataclass
class World:
    catalog: Catalog
    pool: StoragePool
    ctx: ServerContext
    jobs: JobManager
    cloud: Cloud
    gate: CloudGate
    agent: AgentRow
    ds: DataSourceRow
    plane: DataPlane
    http: aiohttp.ClientSession
    srv: BaseTestServer

    def url(self, path: str) -> str:
        return str(self.srv.make_url(API + path))

    async def call(self, path: str, data: Any = None, **kw: Any) -> tuple[int, Any]:
        async with self.http.post(self.url(path), data=data, **kw) as r:
            return r.status, await r.json()

    async def event(self, job_id: str, mtype: str, body: dict[str, Any]) -> None:
        await self.jobs.agent_event(
            self.agent.id, p.Message(mtype, self.agent.id, body, job_id=job_id)
        )

    async def running_backup(self) -> JobId:
        job = await self.jobs.start_backup(self.ds.id)
        await self.jobs.tick()
        await self.event(job.id, p.EVENT_ACCEPTED, {})
        return JobId(job.id)

    async def upload(self, job_id: str) -> str:
        """What the agent sends before its commit: session, chunks, entries."""
        status, doc = await self.call("/sessions", json={"job_id": job_id})
        assert status == 200, doc
        sid = str(doc["session_id"])
        pieces = [bytes(c) for c in self.pool.new_chunker().cut(random_bytes(300_000, 11))]
        chunks = [framing.encode_chunk(c, 3) for c in pieces]
        body = b"".join(p.pack_record(c.id, c.frame) for c in chunks)
        status, doc = await self.call(f"/sessions/{sid}/chunks", data=body)
        assert status == 200, doc
        packer = msgpack.Packer(use_bin_type=True)
        entries = b"".join(packer.pack(e.to_wire()) for e in file_entries({b"srv/a": pieces}))
        status, doc = await self.call(f"/sessions/{sid}/entries", data=entries)
        assert status == 200, doc
        return sid

    async def rps_of(self, job_id: str) -> tuple[list[str], list[str]]:
        """The job's RPs in the pool and in the catalog."""
        rps = await self.pool.list_recovery_points(self.ds.id)
        pool = [str(r.id) for r in rps if r.labels.get("job_id") == job_id]
        rows = await self.catalog.list_recovery_points(self.ds.id)
        return pool, [str(r.id) for r in rows if r.job_id == job_id]


@pytest.fixture
async def world(
    tmp_path: Path, catalog: Catalog, clock: FakeClock, pools: PoolOpener
) -> AsyncIterator[World]:
    pool = await pools.create("race-pool")
    config = load_server_config(None, overrides={"server.data_dir": str(tmp_path / "data")})
    ctx = ServerContext(
        config=config,
        catalog=catalog,
        pool=pool,
        operator_token="operator-token-race",
        ca_pem=b"",
        mqtt_url="mqtt://127.0.0.1:1",
        server_url="http://127.0.0.1:1",
        clock=clock,
    )
    app = make_app(ctx)
    plane = app[DATA_PLANE_KEY]
    jobs = JobManager(catalog, Sent(), JobLimits(4, 600.0), clock=clock, on_final=plane.job_ended)
    cloud = Cloud(ACTIVE)
    gate = CloudGate(cloud, jobs=jobs)
    ctx.jobs, ctx.cloud_gate, jobs.gate = jobs, gate, gate
    token, _ = await catalog.create_agent_token(600)
    agent, secret, _ = await catalog.register_agent(token, None, "web01")
    ds = await catalog.add_data_source(agent.id, "files", ["/srv"], [])
    await jobs.agent_state(agent.id, True, [])
    headers = {"Authorization": f"Bearer {agent.id}:{secret}"}
    async with (
        TestServer(app, host="127.0.0.1") as srv,
        aiohttp.ClientSession(headers=headers) as http,
    ):
        yield World(catalog, pool, ctx, jobs, cloud, gate, agent, ds, plane, http, srv)


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(30):
        while True:
            if await check():
                return
            await asyncio.sleep(0.01)


async def stop_job(w: World, job_id: str) -> None:
    """Stop-Job; the agent, told to cancel, reports cancelled."""
    await w.jobs.cancel(job_id)
    await w.event(job_id, p.EVENT_RESULT, {"status": "cancelled"})


async def policy_stop(w: World, job_id: str) -> None:
    await w.cloud.turn(EXPIRED, w.gate)


async def reserve_failure(w: World, job_id: str) -> None:
    """A parallel chunk upload of the job finds the pool under its reserve."""
    w.ctx.config = replace(w.ctx.config, pool=replace(w.ctx.config.pool, reserve_bytes=1 << 49))
    sid = next(s.id for s in _sessions(w) if s.job_id == job_id)
    chunk = framing.encode_chunk(random_bytes(10_000, 12), 3)
    status, doc = await w.call(f"/sessions/{sid}/chunks", data=p.pack_record(chunk.id, chunk.frame))
    assert status == 507, doc


def _sessions(w: World) -> list[Any]:
    return list(w.plane.sessions.values())


@pytest.mark.parametrize("stop", [stop_job, policy_stop, reserve_failure])
async def test_a_stop_during_the_commit_waits_and_keeps_the_rp(
    world: World, stop: Callable[[World, str], Coroutine[Any, Any, None]]
) -> None:
    """Guards against the race where a job failed or cancelled while its manifest commit
    ran still got its RP written: the job said failed/cancelled beside a listed RP."""
    w = world
    job_id = await w.running_backup()
    sid = await w.upload(job_id)
    with HeldCommit(w.pool) as held:
        commit = asyncio.create_task(w.call(f"/sessions/{sid}/commit", json={"warnings": 0}))
        assert await asyncio.to_thread(held.entered.wait, 30)
        stopping = asyncio.create_task(stop(w, job_id))

        async def stop_waits() -> bool:
            return stopping.done() or w.jobs.commits.waiting(job_id) > 0

        await until(stop_waits)
        assert not stopping.done()  # the end waits for the commit that has begun
        assert (await w.catalog.get_job(job_id)).state is JobState.RUNNING
        held.release.set()
        status, doc = await commit
        await stopping
    assert status == 200, doc
    pool_rps, catalog_rps = await w.rps_of(job_id)
    assert pool_rps == catalog_rps == [doc["rp_id"]]  # nothing half visible
    job = await w.catalog.get_job(job_id)
    if stop is reserve_failure:
        # The refused upload changed nothing: the job ends as its agent reports.
        assert job.state is JobState.RUNNING
        await w.event(job_id, p.EVENT_RESULT, {"status": "succeeded", "rp_id": doc["rp_id"]})
        job = await w.catalog.get_job(job_id)
        assert job.state is JobState.SUCCEEDED, job
        return
    assert job.state is JobState.SUCCEEDED_WITH_WARNINGS, job
    assert job.result is not None and job.result["rp_id"] == doc["rp_id"]
    assert job.error is not None
    assert f"after recovery point {doc['rp_id']} was committed" in job.error
    assert job.warnings >= 1


async def test_a_job_ended_before_the_commit_gets_no_rp(world: World) -> None:
    """The commit reads the job again under its lock: ended while the commit waited (here
    as the daemon's shutdown ends jobs, straight in the catalog), nothing is written."""
    w = world
    job_id = await w.running_backup()
    sid = await w.upload(job_id)
    async with w.jobs.commits.ending(job_id):
        commit = asyncio.create_task(w.call(f"/sessions/{sid}/commit", json={}))

        async def commit_waits() -> bool:
            return commit.done() or w.jobs.commits.waiting(job_id) > 0

        await until(commit_waits)
        await w.catalog.transition_job(job_id, JobState.FAILED, error="the server shut down")
    status, doc = await commit
    assert status == 409 and doc["error"] == f"job {job_id} is failed: nothing of it was committed"
    assert await w.rps_of(job_id) == ([], [])
    assert _sessions(w) == []
