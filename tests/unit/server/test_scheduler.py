"""The scheduler against a real catalog and job engine, on a fake clock in UTC.

T0 (catalog_fixture) is 22:13:20 UTC; the group "pg" is hourly, so its first slot is
23:00:00, ``T0 + 2800``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from server.capacity import InsufficientStorageError, PoolCapacity
from server.catalog import JobKind, JobRow, JobState
from server.catalog_rows import JobTrigger
from server.config import JobsSettings
from server.ids import DataSourceId, JobId
from server.policy import DiskPolicy
from server.scheduler import should_retry
from tests.unit.server.catalog_fixture import T0, FakeClock
from tests.unit.server.schedule_fixture import HOUR, World, add_rp, world_at

S1 = T0 + 2800  # the first hourly slot after T0


@pytest.fixture
async def world(tmp_path: Path, clock: FakeClock) -> AsyncIterator[World]:
    async with world_at(tmp_path, clock) as w:
        yield w


async def test_nothing_before_the_first_slot(world: World) -> None:
    w = world
    assert await w.tick() == []
    w.at(S1 - 1)
    assert await w.tick() == []
    assert await w.backups() == []


async def test_on_time_slot_makes_one_scheduled_job_and_ticks_are_idempotent(
    world: World,
) -> None:
    w = world
    w.at(S1 + 5)
    (job,) = await w.tick()
    assert job.trigger == "schedule" and job.scheduled_for == S1 and job.attempt == 1
    assert job.data_source_id == w.sources[0].id and job.state == "queued"
    assert await w.tick() == []
    w.at(S1 + 600)
    assert await w.tick() == []
    assert len(await w.backups()) == 1
    assert await w.backups(1) == []  # the data source outside the group
    assert await w.missed_alerts() == []


async def test_late_within_grace_is_still_on_schedule(world: World) -> None:
    w = world
    w.at(S1 + 900)  # missed_grace_seconds = 900
    (job,) = await w.tick()
    assert job.trigger == "schedule" and job.scheduled_for == S1
    assert await w.missed_alerts() == []


async def test_one_slot_past_the_grace_is_missed(world: World) -> None:
    w = world
    w.at(S1 + 901)
    (job,) = await w.tick()
    assert job.trigger == "missed" and job.scheduled_for == S1
    (alert,) = await w.missed_alerts()
    assert alert.subject == w.sources[0].id
    assert alert.details["missed_count"] == 1 and alert.details["missed_slots"] == [S1]
    assert "2023-11-14 23:00 UTC" in alert.message and job.id in alert.message


async def test_downtime_across_many_slots_makes_exactly_one_missed_job(world: World) -> None:
    w = world
    w.at(S1 + 10 * HOUR + 120)  # server down from before S1 until just after slot 11
    created = await w.tick()
    assert [(j.trigger, j.scheduled_for) for j in created] == [("missed", S1 + 10 * HOUR)]
    (alert,) = await w.missed_alerts()
    # The newest slot runs now (within the grace); the ten before it did not run.
    assert alert.details["missed_count"] == 10
    assert alert.details["missed_slots"] == [S1 + i * HOUR for i in range(10)]
    assert alert.details["job_id"] == created[0].id
    assert await w.tick() == []
    assert len(await w.backups()) == 1
    (src,) = await w.catalog.protected_sources()
    assert src.last_slot == S1 + 10 * HOUR


async def test_concurrent_ticks_create_one_job(world: World) -> None:
    w = world
    w.at(S1 + 1)
    results = await asyncio.gather(*(w.tick() for _ in range(5)))
    assert sorted(len(r) for r in results) == [0, 0, 0, 0, 1]
    assert len(await w.backups()) == 1


async def test_data_source_added_mid_day_starts_at_the_next_slot(world: World) -> None:
    w = world
    for hour in range(5):
        w.at(S1 + hour * HOUR + 1)
        for job in await w.tick():
            await w.finish(job, "succeeded")
            await add_rp(w, 0, w.clock.now)
    w.at(S1 + 4 * HOUR + 1800)  # 03:30: ds1 joins the hourly group
    await w.catalog.update_group("pg", add=[DataSourceId(w.sources[1].id)])
    assert await w.tick() == []
    w.at(S1 + 5 * HOUR + 1)
    created = await w.tick()
    assert sorted((j.data_source_id, j.trigger) for j in created) == sorted(
        [(w.sources[0].id, "schedule"), (w.sources[1].id, "schedule")]
    )
    assert [j.scheduled_for for j in await w.backups(1)] == [S1 + 5 * HOUR]
    assert await w.missed_alerts() == []


async def test_an_active_backup_serves_the_slot(world: World) -> None:
    w = world
    manual = await w.jobs.start_backup(w.sources[0].id)
    w.at(S1 + 1)
    assert await w.tick() == []
    (src,) = await w.catalog.protected_sources()
    assert src.last_slot == S1
    await w.finish(manual, "succeeded")
    assert await w.tick() == []  # the slot is not served a second time
    assert [j.id for j in await w.backups()] == [manual.id]


async def test_pool_reserve_refusal_is_a_failed_job_with_the_reason(world: World) -> None:
    w = world
    full = PoolCapacity(Path("/pool"), 10 << 30, 1 << 30, 9 << 30, 2 << 30)

    async def refuse() -> object:
        raise InsufficientStorageError(full)

    w.jobs.capacity_check = refuse
    w.at(S1 + 1)
    (job,) = await w.tick()
    assert job.state == "failed" and not job.retryable
    assert job.error is not None and "under its reserve of 2.0 GiB" in job.error
    assert job.trigger == "schedule" and job.scheduled_for == S1
    assert await w.tick() == []  # the slot is served: no job per tick
    w.jobs.capacity_check = None
    w.at(S1 + HOUR + 1)
    (job,) = await w.tick()
    assert job.state == "queued" and job.scheduled_for == S1 + HOUR


async def test_rpo_breach_opens_missed_backup_and_a_fresh_rp_resolves_it(world: World) -> None:
    w = world
    # Every slot is served on time, but its job stays queued (the agent is away).
    for t in (S1 + 1, S1 + HOUR + 1):
        w.at(t)
        await w.tick()
    # Hourly policy + 60 min grace: no RP for more than two hours from joining (T0).
    w.at(T0 + 2 * HOUR)
    await w.tick()
    assert await w.missed_alerts() == []
    w.at(T0 + 2 * HOUR + 1)
    await w.tick()
    (alert,) = await w.missed_alerts()
    assert alert.subject == w.sources[0].id and "no recovery point yet" in alert.message
    await w.tick()
    assert len(await w.missed_alerts()) == 1
    await add_rp(w, 0, w.clock.now + 10)  # the 00:00 slot's backup, at last
    w.at(w.clock.now + 60)
    await w.tick()
    assert await w.missed_alerts() == []


async def test_missed_alert_stays_until_the_catch_up_rp_exists(world: World) -> None:
    w = world
    w.at(S1 + 5)
    (job,) = await w.tick()
    await w.finish(job, "succeeded")
    await add_rp(w, 0, S1 + 30)
    # Down from 23:10 to 00:20: the 00:00 slot did not run in time.
    w.at(S1 + HOUR + 1200)
    (catch_up,) = await w.tick()
    assert catch_up.trigger == "missed"
    (alert,) = await w.missed_alerts()
    assert alert.details["missed_count"] == 1
    # The last RP (23:00:30) is within the RPO (two hours) but older than the served
    # slot: the alert stays open until the catch-up backup's RP exists.
    w.at(S1 + HOUR + 1230)
    await w.tick()
    assert len(await w.missed_alerts()) == 1
    await w.finish(catch_up, "succeeded")
    await add_rp(w, 0, S1 + HOUR + 1300)
    w.at(S1 + HOUR + 1320)
    await w.tick()
    assert await w.missed_alerts() == []


async def test_alert_of_a_data_source_that_left_the_group_resolves(world: World) -> None:
    w = world
    w.at(T0 + 3 * HOUR)
    await w.tick()
    assert len(await w.missed_alerts()) == 1
    await w.catalog.update_group("pg", remove=[DataSourceId(w.sources[0].id)])
    await w.tick()
    assert await w.missed_alerts() == []


# -- retries -------------------------------------------------------------------


async def test_transient_failures_retry_with_backoff_up_to_the_attempt_cap(world: World) -> None:
    w = world  # retry_attempts 3, retry_backoff_seconds 300
    w.at(S1 + 5)
    (job,) = await w.tick()
    w.at(S1 + 10)
    failed = await w.finish(job, "failed", error="connection reset", retryable=True)
    assert failed.retryable and failed.ended_at == S1 + 10
    w.at(S1 + 10 + 299)
    assert await w.tick() == []
    w.at(S1 + 10 + 300)
    (second,) = await w.tick()
    assert (second.trigger, second.attempt, second.scheduled_for) == ("retry", 2, S1)
    w.at(S1 + 400)
    await w.finish(second, "failed", error="connection reset", retryable=True)
    w.at(S1 + 400 + 599)  # the second wait is twice the first
    assert await w.tick() == []
    w.at(S1 + 400 + 600)
    (third,) = await w.tick()
    assert (third.trigger, third.attempt, third.scheduled_for) == ("retry", 3, S1)
    w.at(S1 + 1100)
    await w.finish(third, "failed", error="connection reset", retryable=True)
    w.at(S1 + 1100 + 1200)
    assert await w.tick() == []  # three attempts in all
    assert [j.attempt for j in await w.backups()] == [1, 2, 3]


async def test_retry_stops_once_the_next_slot_has_come(world: World) -> None:
    w = world
    w.configure(jobs=JobsSettings(retry_backoff_seconds=3600))
    w.at(S1 + 5)
    (job,) = await w.tick()
    await w.finish(job, "failed", error="connection reset", retryable=True)
    w.at(S1 + HOUR + 5)  # retry due at S1 + 3605, but the next slot came at S1 + 3600
    (nxt,) = await w.tick()
    assert (nxt.trigger, nxt.scheduled_for, nxt.attempt) == ("schedule", S1 + HOUR, 1)
    assert await w.tick() == []


async def test_permanent_failure_is_not_retried_and_keeps_its_reason(world: World) -> None:
    w = world
    w.at(S1 + 5)
    (job,) = await w.tick()
    failed = await w.finish(job, "failed", error="/srv/0: permission denied")
    assert not failed.retryable and failed.error == "/srv/0: permission denied"
    w.at(S1 + 3000)
    assert await w.tick() == []
    assert len(await w.backups()) == 1


async def test_manual_backup_failure_is_not_retried(world: World) -> None:
    w = world
    job = await w.jobs.start_backup(w.sources[0].id)
    await w.finish(job, "failed", error="connection reset", retryable=True)
    w.at(T0 + 1000)
    assert await w.tick() == []


async def test_agent_offline_past_its_wait_is_transient_and_retried(world: World) -> None:
    w = world  # JobLimits agent_wait_seconds = 600
    w.at(S1 + 5)
    (job,) = await w.tick()
    w.at(S1 + 606)
    await w.jobs.tick()
    failed = await w.catalog.get_job(job.id)
    assert failed.state == JobState.FAILED and failed.retryable
    assert "offline" in (failed.error or "")
    w.at(S1 + 606 + 300)
    (retry,) = await w.tick()
    assert retry.trigger == "retry" and retry.attempt == 2


async def test_a_missed_slot_job_is_retried_too(tmp_path: Path, clock: FakeClock) -> None:
    async with world_at(tmp_path, clock, disk=DiskPolicy(None, ("03:00",))) as w:
        slot = S1 + 4 * HOUR  # 03:00 UTC the next day
        w.at(slot + 2 * HOUR)
        (job,) = await w.tick()
        assert job.trigger == "missed"
        await w.finish(job, "failed", error="cannot connect", retryable=True)
        w.at(w.clock.now + 300)
        (retry,) = await w.tick()
        assert (retry.trigger, retry.scheduled_for) == ("retry", slot)


def _failed(**changes: object) -> JobRow:
    base = JobRow(
        id=JobId("job-000000000001"),
        kind=JobKind.BACKUP,
        state=JobState.FAILED,
        agent_id=None,
        data_source_id=None,
        params={},
        progress={},
        result=None,
        error="connection reset",
        warnings=0,
        created_at=S1 + 5,
        started_at=S1 + 6,
        ended_at=S1 + 10,
        updated_at=S1 + 10,
        trigger=JobTrigger.SCHEDULE,
        attempt=1,
        scheduled_for=S1,
        retryable=True,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_retry_rule_on_its_own() -> None:
    hourly, utc, settings = (
        DiskPolicy(60),
        ZoneInfo("UTC"),
        JobsSettings(retry_backoff_seconds=3000),
    )
    assert not should_retry(_failed(), hourly, utc, S1 + 3009, settings)
    assert should_retry(_failed(), hourly, utc, S1 + 3010, settings)
    # Due, but the slot after the one it serves has come: the schedule takes over.
    assert not should_retry(_failed(scheduled_for=S1 - HOUR), hourly, utc, S1 + 3010, settings)
    assert not should_retry(_failed(ended_at=S1 + 600), hourly, utc, S1 + 3600, settings)
    assert not should_retry(_failed(retryable=False), hourly, utc, S1 + 3010, settings)
    assert not should_retry(_failed(trigger=JobTrigger.MANUAL), hourly, utc, S1 + 3010, settings)
    assert not should_retry(_failed(state=JobState.CANCELLED), hourly, utc, S1 + 3010, settings)
    assert not should_retry(_failed(attempt=3), hourly, utc, S1 + 3599, settings)
    # Attempt 2 waits twice the backoff; daily slots leave room for it.
    daily = DiskPolicy(None, ("23:00",))
    assert not should_retry(_failed(attempt=2), daily, utc, S1 + 6009, settings)
    assert should_retry(_failed(attempt=2), daily, utc, S1 + 6010, settings)
