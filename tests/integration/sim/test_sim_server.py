"""The in-process server on a fake clock (tests/support/sim.py) with real agents: the
ground the schedule simulations stand on."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from server.catalog import JobState
from server.ids import DataSourceId
from tests.support.sim import SimClock, SimServer

DAY = 86400.0


def make_data(root: Path) -> Path:
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("alpha\n" * 100)
    (root / "b.bin").write_bytes(os.urandom(300_000))
    os.symlink("docs/a.txt", root / "link")
    return root


async def test_backup_at_a_simulated_time_is_recorded_at_that_time(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    async with SimServer(tmp_path / "sim") as sim:
        await sim.add_agent("web")
        ds = await sim.add_data_source("web", [data])
        when = sim.clock.advance(3 * DAY)

        job = await sim.backup(ds["id"])

        assert job.state is JobState.SUCCEEDED, job.error
        assert job.created_at == when
        assert job.ended_at == when
        rps = await sim.catalog.list_recovery_points(data_source_id=DataSourceId(ds["id"]))
        assert [(rp.job_id, round(rp.created_at)) for rp in rps] == [(job.id, round(when))]
        assert rps[0].files == 2
        # The pool's own record carries the same time, and so does the RP's name.
        pool_rp = await sim.pool.get_recovery_point(rps[0].id)
        assert pool_rp.created_ns // 10**9 == round(when)
        assert rps[0].id.startswith(time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when)))


async def test_agent_backs_up_again_after_a_server_restart(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    async with SimServer(tmp_path / "sim") as sim:
        await sim.add_agent("web")
        ds = await sim.add_data_source("web", [data])
        first = await sim.backup(ds["id"])
        assert first.state is JobState.SUCCEEDED, first.error

        sim.clock.advance(DAY)
        await sim.restart()
        (data / "docs" / "new.txt").write_text("after the restart\n")
        second = await sim.backup(ds["id"])

        assert second.state is JobState.SUCCEEDED, second.error
        rps = await sim.catalog.list_recovery_points(data_source_id=DataSourceId(ds["id"]))
        assert sorted((rp.job_id, rp.files) for rp in rps) == sorted(
            [(first.id, 2), (second.id, 3)]
        )
        assert round(rps[0].created_at) == round(sim.clock.now())


async def test_clock_jump_does_not_make_agents_look_offline(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    async with SimServer(tmp_path / "sim") as sim:
        await sim.add_agent("web")
        ds = await sim.add_data_source("web", [data])
        agent_id = sim.agent_id("web")
        sim.clock.advance(DAY / 2)

        # Twelve hours of schedule time passed in no real time: no heartbeat is missing.
        await sim.wait_presence_pass()
        await sim.wait_presence_pass()
        assert (await sim.catalog.get_agent(agent_id)).online
        assert sim.jobs.presence[agent_id].online

        # Dispatched at once: the frozen clock never reaches a resend or wait limit.
        job = await sim.backup(ds["id"])
        assert job.state is JobState.SUCCEEDED, job.error
        assert job.started_at == sim.clock.now()
        await sim.wait_jobs_final()


def test_sim_clock_starts_on_a_minute_ahead_and_never_goes_back() -> None:
    clock = SimClock()
    start = clock.now()
    assert start % 60 == 0
    assert start >= time.time()
    assert clock.advance(90) == start + 90
    with pytest.raises(ValueError, match="only moves forward"):
        clock.set(start)
    assert clock.now() == start + 90
    assert SimClock(2_000_000_000.0).now() == 2_000_000_000.0
