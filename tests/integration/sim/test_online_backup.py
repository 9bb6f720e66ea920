"""Online protection on the in-process server's fake clock with a real agent and a real
folder vault registered through the REST API: the online slot copies the latest disk RP,
the disk-retention rule waits for that copy, and the scratch area ends empty."""

from __future__ import annotations

import math
import os
from pathlib import Path

from server.catalog import JobKind, JobState
from server.catalog_rows import JobTrigger
from server.ids import DataSourceId
from storage_pool.vault.scratch import scratch_usage
from tests.support.sim import SimClock, SimServer

HOUR = 3600.0
DAY = 86400.0
PASSPHRASE = "correct horse battery staple"

SETTINGS = {
    "scheduler.timezone": "UTC",
    "scheduler.tick_seconds": "3600",
    "scheduler.maintenance_interval_minutes": "10080",
    "scheduler.missed_grace_seconds": "900",
    "scratch.min_bytes": str(8 << 20),
    "online.pack_mib": "1",
}


async def test_online_slot_copies_the_latest_rp_and_unblocks_disk_retention(
    tmp_path: Path,
) -> None:
    midnight = math.ceil(SimClock().now() / DAY) * DAY
    clock = SimClock(midnight + 7 * 60)
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.bin").write_bytes(os.urandom(3 << 20))
    async with SimServer(tmp_path / "sim", clock=clock, settings=SETTINGS) as sim:
        assert sim.server is not None
        online, online_scheduler = sim.server.online, sim.server.online_scheduler
        scheduler, maintenance = sim.server.scheduler, sim.server.maintenance
        assert online is not None and online_scheduler is not None
        assert scheduler is not None and maintenance is not None

        creds = await sim.api_ok(
            "POST", "/vaults", {"backend": {"kind": "folder", "path": str(tmp_path / "vault")}}
        )
        await sim.api_ok(
            "POST", "/vault/registration", {"credentials": creds, "passphrase": PASSPHRASE}
        )
        await sim.add_agent("web")
        ds = await sim.add_data_source("web", [root], name="data")
        ds_id = DataSourceId(ds["id"])
        await sim.api_ok(
            "POST",
            "/protection-groups",
            {
                "name": "nightly",
                "disk": {"sync_frequency_minutes": 240, "retention_days": 1},
                "online": {"enabled": True, "times": ["21:00"]},
                "members": [ds["id"]],
            },
        )
        # Disk slots every 4 h through the day; no online job before 21:00.
        for hour in (4, 8, 12, 16, 20):
            clock.set(midnight + hour * HOUR)
            (root / f"f{hour}.txt").write_bytes(os.urandom(50_000))
            assert len(await scheduler.tick()) == 1
            await sim.wait_jobs_final()
            assert await online_scheduler.tick() == []
        disk = await sim.catalog.list_recovery_points(data_source_id=ds_id)
        assert len(disk) == 5

        # A day later the old disk RPs are past retention, but no online RP covers them.
        clock.set(midnight + DAY + 20 * HOUR + 30 * 60)
        await maintenance.run_once()
        assert len(await sim.catalog.list_recovery_points(data_source_id=ds_id)) == 5

        # 21:00 (one day late: the missed slots give ONE job), copying the newest RP.
        clock.set(midnight + DAY + 21 * HOUR)
        (job,) = await online_scheduler.tick()
        assert job.kind is JobKind.ONLINE_BACKUP and job.trigger is JobTrigger.MISSED
        done = await sim.wait_job(job.id)
        assert done.state is JobState.SUCCEEDED, done.error
        assert done.result is not None and done.result["disk_rp_id"] == disk[0].id
        assert scratch_usage(sim.server.config.scratch_path) == 0
        assert done.result["scratch_high_water"] <= done.result["scratch_bound"]
        assert await online_scheduler.tick() == []  # the slot is served once

        cloud = await sim.api_ok("GET", f"/recovery-points?tier=cloud&data_source={ds_id}")
        assert [(r["tier"], r["disk_rp_id"]) for r in cloud] == [("cloud", disk[0].id)]
        vault = await sim.api_ok("GET", "/vault")
        assert vault["online_recovery_points"] == 1

        # Now the copy covers the older disk RPs: retention prunes them (not the newest).
        await maintenance.run_once()
        left = await sim.catalog.list_recovery_points(data_source_id=ds_id)
        assert [r.id for r in left] == [disk[0].id]

        # Start-Backup -Online -Wait through the real CLI: nothing new to upload.
        result = await sim.cli("Start-Backup", "-DataSource", ds_id, "-Online", "-Wait")
        assert result.code == 0, result.out + result.err
        jobs = await sim.catalog.list_jobs(data_source_id=ds_id, limit=100)
        manual = next(j for j in jobs if j.kind is JobKind.ONLINE_BACKUP)
        assert manual.trigger is JobTrigger.MANUAL and manual.state is JobState.SUCCEEDED
        assert manual.result is not None and manual.result["bytes_uploaded"] == 0
