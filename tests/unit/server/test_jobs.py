"""The job engine against a real catalog, with a fake clock and the bus replaced by a
recorder of what would be published (the MQTT side is tested end to end elsewhere)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent import protocol as p
from server.catalog import Catalog
from server.jobs import RESEND_SECONDS, JobLimits, JobManager
from tests.unit.server.catalog_fixture import FakeClock, opened


@dataclass
class Sent:
    messages: list[tuple[str, p.Message]] = field(default_factory=list)

    async def __call__(self, agent_id: str, msg: p.Message) -> None:
        self.messages.append((agent_id, msg))

    def of(self, mtype: str) -> list[p.Message]:
        return [m for _, m in self.messages if m.type == mtype]


@dataclass
class World:
    catalog: Catalog
    clock: FakeClock
    sent: Sent
    jobs: JobManager
    agent_id: str
    key: bytes
    ds_ids: Sequence[str]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = FakeClock()
    async with opened(tmp_path / "catalog.sqlite", clock) as catalog:
        token, _ = await catalog.create_agent_token(3600)
        agent, _secret, key = await catalog.register_agent(token, "web01", "web01")
        ds_ids = []
        for i in range(3):
            ds = await catalog.add_data_source(agent.id, f"ds{i}", [f"/srv/{i}"])
            ds_ids.append(ds.id)
        sent = Sent()
        jobs = JobManager(catalog, sent, JobLimits(2, 600.0), clock=clock)
        yield World(catalog, clock, sent, jobs, agent.id, bytes.fromhex(key), ds_ids)


def event(w: World, mtype: str, job_id: str, **body: object) -> p.Message:
    return p.Message(mtype, w.agent_id, body, job_id=job_id, issued_at=w.clock.now)


async def running_backup(w: World, ds: int = 0) -> Any:
    """A backup of data source `ds`, dispatched to the online agent and accepted by it."""
    job = await w.jobs.start_backup(w.ds_ids[ds])
    await w.jobs.agent_state(w.agent_id, True, [])
    await w.jobs.tick()
    await w.jobs.agent_event(w.agent_id, event(w, p.EVENT_ACCEPTED, job.id))
    return job


async def test_job_waits_for_agent_then_fails_past_the_deadline(world: World) -> None:
    w = world
    job = await w.jobs.start_backup(w.ds_ids[0])
    await w.jobs.tick()
    assert w.sent.messages == []  # agent never seen online
    w.clock.now += 601
    await w.jobs.tick()
    job = await w.catalog.get_job(job.id)
    assert job.state == "failed" and "offline" in (job.error or "")


async def test_dispatch_signed_resend_accept_result_idempotent(world: World) -> None:
    w = world
    job = await w.jobs.start_backup(w.ds_ids[0])
    await w.jobs.agent_state(w.agent_id, True, [])
    await w.jobs.tick()
    (cmd,) = w.sent.of(p.CMD_BACKUP)
    assert cmd.check_signature(w.key) and cmd.job_id == job.id
    assert cmd.body["paths"] == ["/srv/0"]
    await w.jobs.tick()
    assert len(w.sent.of(p.CMD_BACKUP)) == 1  # not yet due for a resend
    w.clock.now += RESEND_SECONDS + 1
    await w.jobs.tick()
    assert len(w.sent.of(p.CMD_BACKUP)) == 2  # unanswered: sent again, same job id
    await w.jobs.agent_event(w.agent_id, event(w, p.EVENT_ACCEPTED, job.id))
    assert (await w.catalog.get_job(job.id)).state == "running"
    result = event(w, p.EVENT_RESULT, job.id, status="succeeded", warnings=0)
    await w.jobs.agent_event(w.agent_id, result)
    await w.jobs.agent_event(w.agent_id, result)  # QoS 1 duplicate
    late = event(w, p.EVENT_RESULT, job.id, status="failed", error="late")
    await w.jobs.agent_event(w.agent_id, late)
    job = await w.catalog.get_job(job.id)
    assert job.state == "succeeded" and job.error is None


async def test_agent_restart_fails_its_lost_jobs(world: World) -> None:
    w = world
    job = await running_backup(w)
    await w.jobs.agent_state(w.agent_id, False, [])
    await w.jobs.agent_state(w.agent_id, True, [])  # back, but not running it any more
    job = await w.catalog.get_job(job.id)
    assert job.state == "failed" and "restarted" in (job.error or "")


async def test_running_job_of_a_vanished_agent_fails_after_the_wait(world: World) -> None:
    w = world
    job = await running_backup(w)
    await w.jobs.agent_state(w.agent_id, False, [])
    w.clock.now += 300
    await w.jobs.tick()
    assert (await w.catalog.get_job(job.id)).state == "running"
    w.clock.now += 301
    await w.jobs.tick()
    job = await w.catalog.get_job(job.id)
    assert job.state == "failed" and "went offline" in (job.error or "")


async def test_global_backup_limit_and_one_backup_per_data_source(world: World) -> None:
    w = world
    for ds in w.ds_ids:
        await w.jobs.start_backup(ds)
    with pytest.raises(Exception, match="already"):
        await w.jobs.start_backup(w.ds_ids[0])
    await w.jobs.agent_state(w.agent_id, True, [])
    await w.jobs.tick()
    assert len(w.sent.of(p.CMD_BACKUP)) == 2  # limit 2
    first = w.sent.of(p.CMD_BACKUP)[0]
    assert first.job_id is not None
    await w.jobs.agent_event(w.agent_id, event(w, p.EVENT_ACCEPTED, first.job_id))
    done = event(w, p.EVENT_RESULT, first.job_id, status="succeeded")
    await w.jobs.agent_event(w.agent_id, done)
    await w.jobs.tick()
    assert len({m.job_id for m in w.sent.of(p.CMD_BACKUP)}) == 3


async def test_cancel_queued_and_running(world: World) -> None:
    w = world
    queued = await w.jobs.start_backup(w.ds_ids[0])
    assert (await w.jobs.cancel(queued.id)).state == "cancelled"
    job = await running_backup(w, 1)
    assert (await w.jobs.cancel(job.id)).state == "running"  # the agent stops it
    (cancel,) = w.sent.of(p.CMD_CANCEL)
    assert cancel.body == {"job_id": job.id} and cancel.check_signature(w.key)


async def test_events_for_foreign_or_unknown_jobs_are_ignored(world: World) -> None:
    w = world
    job = await w.jobs.start_backup(w.ds_ids[0])
    stranger = p.Message(p.EVENT_RESULT, "someoneelse", {"status": "succeeded"}, job_id=job.id)
    await w.jobs.agent_event("someoneelse", stranger)
    await w.jobs.agent_event(w.agent_id, event(w, p.EVENT_RESULT, "job-000000000000"))
    bad = event(w, p.EVENT_RESULT, job.id, status="exploded")
    await w.jobs.agent_event(w.agent_id, bad)
    assert (await w.catalog.get_job(job.id)).state == "queued"
