"""Which failures the job engine marks transient (retryable) for the scheduler."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent import protocol as p
from agent.jobs import JobOutcome
from server.catalog import JobState
from tests.unit.server.catalog_fixture import FakeClock
from tests.unit.server.schedule_fixture import World, world_at


@pytest.fixture
async def world(tmp_path: Path, clock: FakeClock) -> AsyncIterator[World]:
    async with world_at(tmp_path, clock) as w:
        yield w


async def running(w: World) -> str:
    job = await w.jobs.start_backup(w.sources[0].id)
    await w.jobs.agent_state(w.agent_id, True, [])
    await w.jobs.tick()
    await w.jobs.agent_event(w.agent_id, p.Message(p.EVENT_ACCEPTED, w.agent_id, {}, job_id=job.id))
    assert (await w.catalog.get_job(job.id)).state == JobState.RUNNING
    return str(job.id)


@pytest.mark.parametrize(
    ("body", "retryable"),
    [
        ({"status": "failed", "error": "connection reset", "retryable": True}, True),
        ({"status": "failed", "error": "permission denied", "retryable": False}, False),
        ({"status": "failed", "error": "from an older agent"}, False),
        ({"status": "failed", "error": "odd", "retryable": "yes"}, False),
        ({"status": "succeeded", "retryable": True}, False),
    ],
)
async def test_agent_says_whether_a_failure_is_transient(
    world: World, body: dict[str, object], retryable: bool
) -> None:
    job_id = await running(world)
    result = p.Message(p.EVENT_RESULT, world.agent_id, body, job_id=job_id)
    await world.jobs.agent_event(world.agent_id, result)
    assert (await world.catalog.get_job(job_id)).retryable is retryable


async def test_agent_restart_is_transient(world: World) -> None:
    job_id = await running(world)
    await world.jobs.agent_state(world.agent_id, False, [])
    await world.jobs.agent_state(world.agent_id, True, [])
    job = await world.catalog.get_job(job_id)
    assert job.state == JobState.FAILED and job.retryable and "restarted" in (job.error or "")


async def test_agent_gone_during_the_job_is_transient(world: World) -> None:
    job_id = await running(world)
    await world.jobs.agent_state(world.agent_id, False, [])
    world.at(world.clock.now + 601)
    await world.jobs.tick()
    job = await world.catalog.get_job(job_id)
    assert job.state == JobState.FAILED and job.retryable and "went offline" in (job.error or "")


async def test_cancel_is_not_a_retryable_failure(world: World) -> None:
    job = await world.jobs.start_backup(world.sources[0].id)
    cancelled = await world.jobs.cancel(job.id)
    assert cancelled.state == JobState.CANCELLED and not cancelled.retryable


def test_agent_result_body_carries_retryable() -> None:
    assert JobOutcome("failed", error="x", retryable=True).body()["retryable"] is True
    assert JobOutcome("succeeded").body()["retryable"] is False
