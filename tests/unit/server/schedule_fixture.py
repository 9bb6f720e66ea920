"""A protected world for the scheduler, retention and maintenance tests: a real catalog on a
fake clock, one registered agent, data sources in a protection group, the real job engine
with its bus replaced by a recorder, and the real alert center (no webhook)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import protocol as p
from server.alerts import AlertCenter
from server.catalog import AlertRow, Catalog, DataSourceRow, JobRow
from server.config import AlertsSettings, JobsSettings, SchedulerSettings, ServerConfig
from server.ids import AgentId, DataSourceId
from server.jobs import JobLimits, JobManager
from server.policy import DiskPolicy, OnlinePolicy
from server.scheduler import Scheduler
from storage_pool import RecoveryPoint
from tests.unit.server.catalog_fixture import FakeClock, add_rp_row, opened

HOUR = 3600.0
DAY = 86400.0


@dataclass
class Sent:
    messages: list[tuple[str, p.Message]] = field(default_factory=list)

    async def __call__(self, agent_id: str, msg: p.Message) -> None:
        self.messages.append((agent_id, msg))


@dataclass
class World:
    catalog: Catalog
    clock: FakeClock
    jobs: JobManager
    alerts: AlertCenter
    scheduler: Scheduler
    agent_id: AgentId
    sources: list[DataSourceRow]
    config: ServerConfig

    def configure(self, **sections: Any) -> None:
        """Replace config sections: ``w.configure(jobs=JobsSettings(...))``."""
        self.config = dataclasses.replace(self.config, **sections)

    def at(self, t: float) -> None:
        assert t >= self.clock.now, "the fake clock never goes back"
        self.clock.now = t

    async def tick(self) -> list[JobRow]:
        return await self.scheduler.tick()

    async def missed_alerts(self) -> list[AlertRow]:
        return await self.catalog.open_alerts_of_kind("missed_backup")

    async def backups(self, ds: int = 0) -> list[JobRow]:
        """Backup jobs of data source `ds`, oldest first."""
        jobs = await self.catalog.list_jobs(data_source_id=self.sources[ds].id, limit=10_000)
        return sorted((j for j in jobs if j.kind == "backup"), key=lambda j: j.created_at)

    async def finish(self, job: JobRow, status: str, **body: Any) -> JobRow:
        """Drive `job` through the engine as its agent would: accepted, then a result."""
        await self.jobs.agent_state(self.agent_id, True, [])
        await self.jobs.tick()
        accepted = p.Message(p.EVENT_ACCEPTED, self.agent_id, {}, job_id=job.id)
        await self.jobs.agent_event(self.agent_id, accepted)
        result = p.Message(p.EVENT_RESULT, self.agent_id, {"status": status, **body}, job_id=job.id)
        await self.jobs.agent_event(self.agent_id, result)
        return await self.catalog.get_job(job.id)


CapacityCheck = Callable[[], Awaitable[object]]


@asynccontextmanager
async def world_at(
    tmp_path: Path,
    clock: FakeClock,
    *,
    disk: DiskPolicy | None = None,
    online: OnlinePolicy | None = None,
    members: int = 1,
    spare: int = 1,
) -> AsyncIterator[World]:
    """`members` data sources in group "pg" (joined at the clock's now) and `spare` more
    outside any group."""
    async with opened(tmp_path / "catalog.sqlite", clock) as catalog:
        token, _ = await catalog.create_agent_token(3600)
        agent, _secret, _key = await catalog.register_agent(token, "web01", "web01")
        sources = [
            await catalog.add_data_source(agent.id, f"ds{i}", [f"/srv/{i}"])
            for i in range(members + spare)
        ]
        await catalog.create_group(
            "pg",
            disk or DiskPolicy(sync_frequency_minutes=60),
            online or OnlinePolicy(),
            [DataSourceId(s.id) for s in sources[:members]],
        )
        jobs = JobManager(catalog, Sent(), JobLimits(4, 600.0), clock=clock)
        alerts = AlertCenter(catalog, lambda: "")
        config = ServerConfig(
            scheduler=SchedulerSettings(timezone="UTC"),
            jobs=JobsSettings(),
            alerts=AlertsSettings(),
        )
        holder: list[World] = []
        scheduler = Scheduler(catalog, jobs, alerts, lambda: holder[0].config, clock)
        world = World(catalog, clock, jobs, alerts, scheduler, agent.id, sources, config)
        holder.append(world)
        try:
            yield world
        finally:
            await alerts.close(0)


async def add_rp(w: World, ds: int, created_at: float) -> RecoveryPoint:
    """A catalog RP row of data source `ds` created at `created_at` (no pool behind it)."""
    return await add_rp_row(w.catalog, w.sources[ds], created_at)
