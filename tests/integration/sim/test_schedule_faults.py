"""Schedules meeting trouble, on the in-process server's fake clock with a real agent:
the server down across slots, the server stopped while a scheduled backup runs, and the
agent offline across a slot."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from server.catalog import JobKind, JobRow, JobState
from server.catalog_rows import JobTrigger
from server.ids import DataSourceId
from tests.support.sim import SimClock, SimServer

HOUR = 3600.0
DAY = 86400.0

SETTINGS = {
    "scheduler.timezone": "UTC",
    "scheduler.tick_seconds": "3600",
    "scheduler.maintenance_interval_minutes": "10080",
    "scheduler.missed_grace_seconds": "900",
    "jobs.agent_wait_seconds": "600",
    "jobs.retry_backoff_seconds": "120",
    "jobs.retry_attempts": "3",
    "alerts.agent_offline_minutes": "5",
}


def midnight_start() -> float:
    return math.ceil(SimClock().now() / DAY) * DAY + 7 * 60


async def hourly_group(sim: SimServer, root: Path) -> DataSourceId:
    await sim.add_agent("web")
    ds = await sim.add_data_source("web", [root], name="data")
    await sim.api_ok(
        "POST",
        "/protection-groups",
        {"name": "hourly", "disk": {"sync_frequency_minutes": 60}, "members": [ds["id"]]},
    )
    return DataSourceId(ds["id"])


async def backups(sim: SimServer, ds_id: DataSourceId) -> list[JobRow]:
    jobs = await sim.catalog.list_jobs(data_source_id=ds_id, limit=10_000)
    return sorted((j for j in jobs if j.kind is JobKind.BACKUP), key=lambda j: j.created_at)


async def alerts(sim: SimServer, kind: str) -> list[dict[str, Any]]:
    every = await sim.api_ok("GET", "/alerts?all=true")
    return [a for a in every if a["kind"] == kind]


def make_data(root: Path, size: int = 200_000) -> Path:
    root.mkdir(parents=True)
    (root / "a.bin").write_bytes(os.urandom(size))
    return root


async def tick_and_wait(sim: SimServer) -> list[JobRow]:
    assert sim.server is not None and sim.server.scheduler is not None
    created = await sim.server.scheduler.tick()
    await sim.wait_jobs_final(within=120)
    return created


async def test_server_down_across_slots_runs_once_and_raises_missed_backup(
    tmp_path: Path,
) -> None:
    start = midnight_start()
    clock = SimClock(start)
    root = make_data(tmp_path / "data")
    async with SimServer(tmp_path / "sim", clock=clock, settings=SETTINGS) as sim:
        ds_id = await hourly_group(sim, root)
        for hour in (1, 2):
            clock.set(start - 7 * 60 + hour * HOUR)
            assert len(await tick_and_wait(sim)) == 1

        await sim.stop()
        clock.set(start - 7 * 60 + 7 * HOUR + 20 * 60)  # 07:20: slots 03:00-07:00 passed
        await sim.start()
        await sim.wait_agent_online("web")
        await tick_and_wait(sim)  # the start-up tick may have made the job already

        jobs = await backups(sim, ds_id)
        assert [j.trigger for j in jobs] == [
            JobTrigger.SCHEDULE,
            JobTrigger.SCHEDULE,
            JobTrigger.MISSED,
        ]
        catch_up = jobs[-1]
        assert catch_up.state is JobState.SUCCEEDED, catch_up.error
        assert catch_up.scheduled_for == start - 7 * 60 + 7 * HOUR
        missed = await alerts(sim, "missed_backup")
        assert [a["subject"] for a in missed] == [ds_id]
        assert "03:00" in missed[0]["message"], missed[0]

        # Back on schedule: the next slot is an ordinary one, and the alert clears.
        clock.set(start - 7 * 60 + 8 * HOUR)
        created = await tick_and_wait(sim)
        assert [j.trigger for j in created] == [JobTrigger.SCHEDULE]
        await tick_and_wait(sim)  # the tick after the RP landed resolves the alert
        assert all(a["resolved_at"] is not None for a in await alerts(sim, "missed_backup"))
        assert len(await sim.catalog.list_recovery_points(data_source_id=ds_id)) == 4


async def test_server_stopped_during_a_scheduled_backup_retries_it(tmp_path: Path) -> None:
    start = midnight_start()
    clock = SimClock(start)
    # Large enough that the stop lands while the backup runs.
    root = make_data(tmp_path / "data", size=400 << 20)
    async with SimServer(tmp_path / "sim", clock=clock, settings=SETTINGS) as sim:
        ds_id = await hourly_group(sim, root)
        clock.set(start - 7 * 60 + HOUR)
        assert sim.server is not None and sim.server.scheduler is not None
        (job,) = await sim.server.scheduler.tick()
        while (await sim.catalog.get_job(job.id)).state is not JobState.RUNNING:
            await sim.wait_presence_pass()
        await sim.stop()
        await sim.start()
        await sim.wait_agent_online("web")

        failed = await sim.catalog.get_job(job.id)
        assert failed.state is JobState.FAILED and failed.retryable, failed
        assert await sim.catalog.list_recovery_points(data_source_id=ds_id) == []

        clock.advance(119)  # the backoff is 120 s
        assert not [j for j in await tick_and_wait(sim) if j.data_source_id == ds_id]
        clock.advance(1)
        created = await tick_and_wait(sim)
        assert [(j.trigger, j.attempt, j.scheduled_for) for j in created] == [
            (JobTrigger.RETRY, 2, job.scheduled_for)
        ]
        retried = await sim.catalog.get_job(created[0].id)
        assert retried.state is JobState.SUCCEEDED, retried.error
        assert len(await sim.catalog.list_recovery_points(data_source_id=ds_id)) == 1


async def test_agent_offline_across_a_slot(tmp_path: Path) -> None:
    start = midnight_start()
    clock = SimClock(start)
    root = make_data(tmp_path / "data")
    async with SimServer(tmp_path / "sim", clock=clock, settings=SETTINGS) as sim:
        ds_id = await hourly_group(sim, root)
        server = sim.server
        assert server is not None and server.scheduler is not None
        assert server.alert_rules is not None

        # Offline at the slot, back within agents' wait: the job waits, then runs.
        await sim.stop_agent("web")
        await sim.wait_agent_online("web", online=False)
        clock.set(start - 7 * 60 + HOUR)
        (job,) = await server.scheduler.tick()
        clock.advance(300)
        await sim.wait_presence_pass()
        assert (await sim.catalog.get_job(job.id)).state is JobState.QUEUED
        await sim.start_agent("web")
        done = await sim.wait_job(job.id)
        assert done.state is JobState.SUCCEEDED, done.error

        # Offline past the wait: the job fails as transient, an agent-offline alert opens,
        # and the retry runs once the agent is back.
        await sim.stop_agent("web")
        await sim.wait_agent_online("web", online=False)
        clock.set(start - 7 * 60 + 2 * HOUR)
        (job,) = await server.scheduler.tick()
        clock.advance(601)
        failed = await sim.wait_job(job.id)
        assert failed.state is JobState.FAILED and failed.retryable, failed
        assert "offline" in (failed.error or "")
        await server.alert_rules.evaluate_once()
        offline = await alerts(sim, "agent_offline")
        assert [a["resolved_at"] for a in offline] == [None]

        await sim.start_agent("web")
        await sim.wait_agent_online("web")
        clock.advance(120)
        created = await tick_and_wait(sim)
        assert [(j.trigger, j.attempt) for j in created] == [(JobTrigger.RETRY, 2)]
        assert (await sim.catalog.get_job(created[0].id)).state is JobState.SUCCEEDED
        await server.alert_rules.evaluate_once()
        assert all(a["resolved_at"] is not None for a in await alerts(sim, "agent_offline"))
        assert len(await sim.catalog.list_recovery_points(data_source_id=ds_id)) == 2
