"""The free-space reserve meets the schedule, on a real 64 MiB tmpfs pool: a scheduled
backup below the reserve is refused with the reserve's message and an alert; pruning and
GC still run in that state and give the space back; the next slot backs up again."""

from __future__ import annotations

import math
import os
from pathlib import Path

from server.catalog import JobKind, JobState
from server.ids import DataSourceId
from storage_pool.gc import SAFETY_NONE
from tests.support.sim import SimClock, SimServer
from tests.support.tmpfs import mounted_tmpfs

MiB = 1 << 20
DAY = 86400.0


async def test_prune_and_gc_run_below_the_reserve_and_free_it(tmp_path: Path) -> None:
    start = math.ceil(SimClock().now() / DAY) * DAY + 7 * 60
    clock = SimClock(start)
    data = tmp_path / "data"
    data.mkdir()
    with mounted_tmpfs(tmp_path / "small-fs", 64 * MiB) as fs:
        settings = {
            "pool.path": str(fs / "pool"),
            "pool.reserve_bytes": str(16 * MiB),
            "pool.reserve_percent": "0",
            "scheduler.timezone": "UTC",
            "scheduler.tick_seconds": "3600",
            "scheduler.maintenance_interval_minutes": "10080",
        }
        async with SimServer(
            tmp_path / "sim", clock=clock, settings=settings, gc_safety=SAFETY_NONE
        ) as sim:
            server = sim.server
            assert server and server.scheduler and server.maintenance and server.alert_rules
            await sim.add_agent("web")
            ds = await sim.add_data_source("web", [data], name="data")
            ds_id = DataSourceId(ds["id"])
            await sim.api_ok(
                "POST",
                "/protection-groups",
                {
                    "name": "daily",
                    "disk": {"sync_frequency_minutes": 1440, "retention_days": 1},
                    "members": [ds_id],
                },
            )

            async def slot(day: int) -> list[JobState]:
                clock.set(start - 7 * 60 + day * DAY)
                created = await server.scheduler.tick()  # type: ignore[union-attr]
                await sim.wait_jobs_final()
                return [(await sim.catalog.get_job(j.id)).state for j in created]

            # Two daily RPs of 12 MiB each, then a filler that puts the pool under its
            # reserve.
            (data / "a.bin").write_bytes(os.urandom(12 * MiB))
            assert await slot(1) == [JobState.SUCCEEDED]
            (data / "a.bin").unlink()
            (data / "b.bin").write_bytes(os.urandom(12 * MiB))
            assert await slot(2) == [JobState.SUCCEEDED]
            free = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize
            (fs / "filler").write_bytes(b"\0" * (free - 10 * MiB))

            # Below the reserve: the slot's backup is refused at once, with the reason.
            assert await slot(3) == [JobState.FAILED]
            (refused,) = [
                j
                for j in await sim.catalog.list_jobs(data_source_id=ds_id)
                if j.kind is JobKind.BACKUP and j.state is JobState.FAILED
            ]
            assert "under its reserve" in (refused.error or ""), refused.error
            await server.alert_rules.evaluate_once()
            reserve = [a for a in await sim.api_ok("GET", "/alerts") if a["kind"] == "pool_reserve"]
            assert len(reserve) == 1

            # Maintenance still works: day 1's RP has expired, its chunks go.
            report = await server.maintenance.run_once()
            assert len(report.pruned) == 1 and report.gc_job is not None
            gc_job = await sim.catalog.get_job(report.gc_job.id)
            assert gc_job.state is JobState.SUCCEEDED, gc_job.error
            assert (gc_job.result or {}).get("bytes_reclaimed", 0) >= 12 * MiB
            await server.alert_rules.evaluate_once()
            assert not [
                a for a in await sim.api_ok("GET", "/alerts") if a["kind"] == "pool_reserve"
            ]

            # And the next slot backs up again.
            (data / "c.bin").write_bytes(os.urandom(1 * MiB))
            assert await slot(4) == [JobState.SUCCEEDED]
            assert (await sim.pool.verify()).clean
