"""Thirty simulated days of three protection groups, with a real agent, broker, pool and
catalog: the schedule, retention, pruning and GC together.

The server runs in-process on a fake clock (tests/support/sim.py). The test moves the
clock from one schedule slot to the next, lets the scheduler create its jobs (the real
agent backs up real files that change between slots), and runs maintenance every
simulated night. At the end it checks that exactly the expected recovery points exist,
that retention holds to the minute, that no slot produced two jobs, that the pool
verifies clean, and that every remaining RP restores to what the files were at its slot.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from server.catalog import JobKind, JobRow, JobState
from server.catalog_rows import JobTrigger
from server.ids import DataSourceId
from server.policy import DiskPolicy, resolve_timezone, slots_between
from storage_pool.gc import SAFETY_NONE
from tests.support.sim import SimClock, SimServer

DAY = 86400.0
UTC = resolve_timezone("UTC")
SIM_DAYS = 30

# name -> (API disk policy, the same as a DiskPolicy)
GROUPS: dict[str, tuple[dict[str, object], DiskPolicy]] = {
    "daily": (
        {"sync_frequency_minutes": 1440, "retention_days": 3},
        DiskPolicy(1440, (), 3),
    ),
    "twice": (
        {
            "sync_frequency_minutes": "rp-times",
            "recovery_point_times": ["06:00", "18:00"],
            "retention_days": 5,
        },
        DiskPolicy(None, ("06:00", "18:00"), 5),
    ),
    "halfday": (
        {"sync_frequency_minutes": 720, "retention_days": 2},
        DiskPolicy(720, (), 2),
    ),
}


def tree_hashes(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = Path(dirpath) / name
            out[str(full.relative_to(root))] = hashlib.sha256(full.read_bytes()).hexdigest()
    return out


def mutate(root: Path, n: int, when: float) -> None:
    """The n-th change of a data source: a file rewritten each time, one added every third
    time, the oldest added one deleted every fifth."""
    (root / "counter.txt").write_text(f"change {n} at {when}\n")
    if n % 3 == 0:
        (root / "added").mkdir(exist_ok=True)
        (root / "added" / f"f{n:03d}.bin").write_bytes(os.urandom(20_000 + n))
    if n % 5 == 0 and (root / "added").is_dir():
        added = sorted((root / "added").iterdir())
        if added:
            added[0].unlink()


def make_source(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "base.bin").write_bytes(os.urandom(300_000))
    (root / "docs").mkdir()
    (root / "docs" / "readme.txt").write_text("stays the same\n" * 50)
    return root


def events(start: float, end: float) -> list[tuple[float, set[str]]]:
    """(time, what happens then) in order: the groups with a slot, or "maintenance" (03:00
    each day)."""
    due: dict[float, set[str]] = {}
    for name, (_, pol) in GROUPS.items():
        for t in slots_between(pol, UTC, start, end):
            due.setdefault(t, set()).add(name)
    for t in slots_between(DiskPolicy(None, ("03:00",), 1), UTC, start, end):
        due.setdefault(t, set()).add("maintenance")
    return sorted(due.items())


def expected_rps(slots: Iterable[float], retention_days: int, now: float) -> list[float]:
    """The rule: an RP is kept while younger than retention, and the newest always."""
    slots = sorted(slots)
    kept = [s for s in slots if s + retention_days * DAY > now]
    if slots and slots[-1] not in kept:
        kept.append(slots[-1])
    return kept


async def run_month(
    sim: SimServer, sources: dict[str, Path], ds_ids: dict[str, DataSourceId], start: float
) -> dict[tuple[str, float], dict[str, str]]:
    """Drive the schedule for SIM_DAYS; returns each slot's source contents."""
    server = sim.server
    assert server is not None and server.scheduler and server.maintenance
    state_at: dict[tuple[str, float], dict[str, str]] = {}
    changes = dict.fromkeys(GROUPS, 0)
    for when, due in events(start, start + SIM_DAYS * DAY):
        sim.clock.set(when)
        if "maintenance" in due:
            await server.maintenance.run_once()
            continue
        for name in due:
            changes[name] += 1
            mutate(sources[name], changes[name], when)
            state_at[(name, when)] = tree_hashes(sources[name])
        created = await server.scheduler.tick()
        assert {j.data_source_id for j in created} == {ds_ids[n] for n in due}, when
        await sim.wait_jobs_final(within=120)
    return state_at


async def rp_times(sim: SimServer, ds_id: DataSourceId) -> list[float]:
    return sorted(
        rp.created_at for rp in await sim.catalog.list_recovery_points(data_source_id=ds_id)
    )


async def check_retention_to_the_minute(sim: SimServer, ds_id: DataSourceId, days: int) -> None:
    """The oldest RP kept expires at exactly created_at + retention: a minute earlier it
    is still there, at that second it is pruned."""
    server = sim.server
    assert server is not None and server.maintenance
    await server.maintenance.run_once()
    oldest = (await rp_times(sim, ds_id))[0]
    sim.clock.set(max(sim.clock.now(), oldest + days * DAY - 60))
    await server.maintenance.run_once()
    assert oldest in await rp_times(sim, ds_id)
    sim.clock.set(oldest + days * DAY)
    await server.maintenance.run_once(force_gc=True)
    assert oldest not in await rp_times(sim, ds_id)


async def check_jobs(sim: SimServer, slots_served: int) -> None:
    """Every slot ran, once, and pruning and GC ran."""
    jobs = await sim.catalog.list_jobs(limit=100_000)
    backups = [j for j in jobs if j.kind is JobKind.BACKUP]
    served = sorted((str(j.data_source_id), j.scheduled_for or 0.0) for j in backups)
    assert len(served) == len(set(served)) == slots_served
    assert all(j.trigger is JobTrigger.SCHEDULE for j in backups)
    failed = [(j.id, j.error) for j in backups if j.state is not JobState.SUCCEEDED]
    assert not failed
    prunes = [j for j in jobs if j.kind is JobKind.PRUNE]
    assert prunes and all(j.state is JobState.SUCCEEDED for j in prunes)
    gcs = [j for j in jobs if j.kind is JobKind.GC]
    assert gcs and all(j.state is JobState.SUCCEEDED for j in gcs)
    # Pruned RPs left chunks only they used (each change adds a file): GC reclaimed them.
    assert sum((j.result or {}).get("bytes_reclaimed", 0) for j in gcs) > 0


async def check_restores(
    sim: SimServer,
    tmp_path: Path,
    sources: dict[str, Path],
    ds_ids: dict[str, DataSourceId],
    state_at: dict[tuple[str, float], dict[str, str]],
) -> None:
    """Every remaining RP restores to what its data source held at its slot."""
    for name, ds_id in ds_ids.items():
        for rp in await sim.catalog.list_recovery_points(data_source_id=ds_id):
            target = tmp_path / "restore" / rp.id
            job = await sim.api_ok(
                "POST", "/jobs/restore", {"rp_id": rp.id, "items": [], "target_path": str(target)}
            )
            done: JobRow = await sim.wait_job(job["id"], within=120)
            assert done.state is JobState.SUCCEEDED, done.error
            got = tree_hashes(target / str(sources[name]).lstrip("/"))
            assert got == state_at[(name, rp.created_at)], (name, rp.id)
            shutil.rmtree(target)


async def test_thirty_simulated_days_of_three_groups(tmp_path: Path) -> None:
    # Start just after a UTC midnight so the days read plainly.
    start = math.ceil(SimClock().now() / DAY) * DAY + 7 * 60
    settings = {
        "scheduler.timezone": "UTC",
        # The test calls tick() and run_once() itself; the loops stay out of the way.
        "scheduler.tick_seconds": "3600",
        "scheduler.maintenance_interval_minutes": "10080",
        "jobs.job_history_days": "60",
    }
    sources = {name: make_source(tmp_path / "data" / name) for name in GROUPS}
    async with SimServer(
        tmp_path / "sim", clock=SimClock(start), settings=settings, gc_safety=SAFETY_NONE
    ) as sim:
        await sim.add_agent("web")
        ds_ids: dict[str, DataSourceId] = {}
        for name, root in sources.items():
            ds = await sim.add_data_source("web", [root], name=name)
            ds_ids[name] = DataSourceId(ds["id"])
            await sim.api_ok(
                "POST",
                "/protection-groups",
                {"name": name, "disk": GROUPS[name][0], "members": [ds["id"]]},
            )

        state_at = await run_month(sim, sources, ds_ids, start)
        await check_retention_to_the_minute(
            sim, ds_ids["halfday"], GROUPS["halfday"][1].retention_days
        )

        # Exactly the expected recovery points, in the catalog and in the pool.
        now = sim.clock.now()
        for name, (_, policy) in GROUPS.items():
            want = expected_rps([t for (n, t) in state_at if n == name], policy.retention_days, now)
            got = await rp_times(sim, ds_ids[name])
            assert got == want, f"{name}: {len(got)} RPs kept, {len(want)} expected"
        kept = {
            str(rp.id)
            for ds_id in ds_ids.values()
            for rp in await sim.catalog.list_recovery_points(data_source_id=ds_id)
        }
        assert {str(rp.id) for rp in await sim.pool.list_recovery_points()} == kept

        await check_jobs(sim, len(state_at))
        report = await sim.pool.verify()
        assert report.clean, report
        await check_restores(sim, tmp_path, sources, ds_ids, state_at)
