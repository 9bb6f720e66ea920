"""Maintenance against a real catalog and a real storage pool, on a fake clock: prune,
GC, job history. GC itself runs on real time with no safety margin (SAFETY_NONE)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import shutil
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from server.catalog import JobKind, JobState, recovery_point_labels
from server.config import JobsSettings, SchedulerSettings
from server.maintenance import LAST_CLOUD_GC_KEY, LAST_GC_KEY, MAINTENANCE_FAILED, Maintenance
from server.online_backup import OnlineBackupRunner
from server.policy import DiskPolicy
from server.scratch_bound import ScratchGuard
from storage_pool import RecoveryPoint, StoragePool, chunk_id_of
from storage_pool.gc import SAFETY_NONE
from storage_pool.pool import Durability
from tests.unit.pool.file_backup import file_entries
from tests.unit.server.catalog_fixture import T0, FakeClock
from tests.unit.server.schedule_fixture import DAY, HOUR, World, world_at
from tests.unit.server.vault_fixture import PASSPHRASE, folder_spec, plain_opener, registry

T = TypeVar("T")


@dataclass
class Env:
    w: World
    pool: StoragePool
    maintenance: Maintenance

    async def backup(self, ds: int, pieces: list[bytes]) -> RecoveryPoint:
        """A committed backup of `pieces` as one file, in the pool and the catalog."""
        agent = await self.w.catalog.get_agent(self.w.agent_id)
        source = self.w.sources[ds]
        async with self.pool.session(source.id) as session:
            await session.put_data(pieces)
            await session.add_entries(file_entries({b"file": pieces}))
            rp = await session.commit(recovery_point_labels(agent, source, None))
        await self.w.catalog.add_recovery_point(rp)
        return rp

    async def read(self, rp: RecoveryPoint) -> bytes:
        entry = await self.pool.find_entry(rp, b"file")
        return b"".join([piece async for piece in self.pool.read_file(entry)])

    async def rp_ids(self) -> tuple[list[str], list[str]]:
        """(catalog, pool) RP ids, oldest first."""
        rows = await self.w.catalog.list_recovery_points()
        pool = await self.pool.list_recovery_points()
        return [r.id for r in reversed(rows)], [r.id for r in pool]


@pytest.fixture
async def env(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Env]:
    disk = DiskPolicy(sync_frequency_minutes=60, retention_days=1)
    async with world_at(tmp_path, clock, disk=disk) as w:
        pool = await StoragePool.create(
            tmp_path / "pool", clock=lambda: round(clock() * 1e9), durability=Durability.FILESYSTEM
        )
        try:
            m = Maintenance(
                w.catalog, pool, w.alerts, lambda: w.config, clock, gc_safety=SAFETY_NONE
            )
            yield Env(w, pool, m)
        finally:
            await pool.close()
            await asyncio.to_thread(shutil.rmtree, tmp_path / "pool", ignore_errors=True)


async def eventually(
    read: Callable[[], Awaitable[T]], ok: Callable[[T], bool], seconds: float = 10.0
) -> T:
    """Poll `read` until `ok` holds (a background task's work shows up)."""
    async with asyncio.timeout(seconds):
        for _ in itertools.count():
            value = await read()
            if ok(value):
                return value
            await asyncio.sleep(0.01)
    raise AssertionError("unreachable")


def piece(tag: str) -> bytes:
    return tag.encode() * 5000


async def test_prune_then_gc_reclaims_and_the_pool_stays_consistent(env: Env) -> None:
    w = env.w
    a, b, c = piece("a"), piece("b"), piece("c")
    rp0 = await env.backup(0, [a])
    w.at(T0 + HOUR)
    rp1 = await env.backup(0, [b, c])
    w.at(T0 + 2 * HOUR)
    rp2 = await env.backup(0, [c])  # shares c with rp1
    spare = await env.backup(1, [piece("s")])  # not protected: kept however old
    w.at(T0 + HOUR + DAY - 1)
    report = await env.maintenance.run_once()  # rp0 is past its day, rp1 one second short
    assert report.pruned == (rp0.id,)
    w.at(T0 + HOUR + DAY)
    first, second = await asyncio.gather(env.maintenance.run_once(), env.maintenance.run_once())
    assert first.pruned == (rp1.id,) and second.pruned == ()  # one run at a time
    assert second.prune_job is None
    catalog_ids, pool_ids = await env.rp_ids()
    assert sorted(catalog_ids) == sorted(pool_ids) == sorted([rp2.id, spare.id])

    job = first.prune_job
    assert job is not None and job.state == JobState.SUCCEEDED and job.kind == JobKind.PRUNE
    assert job.trigger == "maintenance" and job.agent_id is None
    assert job.result is not None and job.result["pruned"] == 1
    assert job.result["recovery_points"] == [rp1.id]
    gc_job, gc = first.gc_job, first.gc
    assert gc_job is not None and gc is not None and gc_job.state == JobState.SUCCEEDED
    assert gc_job.result is not None and gc_job.result["bytes_reclaimed"] == gc.swept_bytes > 0
    # b and rp1's manifest are garbage; c lives on in rp2.
    present = env.pool.present([chunk_id_of(x) for x in (a, b, c)])
    assert present == {chunk_id_of(c)}
    assert await env.read(rp2) == c
    verify = await env.pool.verify()
    assert verify.clean and verify.recovery_points == 2
    jobs = await w.catalog.list_jobs(limit=100)
    assert sorted(j.kind for j in jobs if j.kind != "backup") == ["gc", "gc", "prune", "prune"]


async def test_gc_runs_on_its_interval_or_when_forced(env: Env) -> None:
    """A fresh install records its start instead of collecting at once (a GC in the first
    minutes made a SIGTERM stop wait for it): the first GC is an interval later."""
    w = env.w
    report = await env.maintenance.run_once()
    assert report.prune_job is None and report.gc_job is None  # never ran before: not yet
    assert await w.catalog.get_server_state(LAST_GC_KEY) == repr(T0)
    w.at(T0 + 24 * HOUR - 1)
    assert (await env.maintenance.run_once()).gc_job is None
    w.at(T0 + 24 * HOUR)
    assert (await env.maintenance.run_once()).gc_job is not None
    assert await w.catalog.get_server_state(LAST_GC_KEY) == repr(T0 + 24 * HOUR)
    w.at(T0 + 48 * HOUR - 1)
    assert (await env.maintenance.run_once(force_gc=True)).gc_job is not None
    w.at(T0 + 72 * HOUR - 2)
    assert (await env.maintenance.run_once()).gc_job is None  # the forced run counts
    w.at(T0 + 72 * HOUR - 1)
    assert (await env.maintenance.run_once()).gc_job is not None


async def test_the_newest_rp_survives_any_age(env: Env) -> None:
    w = env.w
    only = await env.backup(0, [piece("x")])
    w.at(T0 + 400 * DAY)
    report = await env.maintenance.run_once()
    assert report.pruned == ()
    assert await env.read(only) == piece("x")


async def test_crash_between_row_and_pool_record_is_healed(env: Env) -> None:
    w = env.w
    old = await env.backup(0, [piece("o")])
    w.at(T0 + HOUR)
    await env.backup(0, [piece("n")])
    w.at(T0 + 2 * DAY)
    # A prune that died after deleting the row, before the pool record.
    assert await w.catalog.remove_recovery_point(old.id)
    # The next start re-adds the row from the pool; the next prune finishes the job.
    rebuilt = await w.catalog.rebuild_from_pool(await env.pool.list_recovery_points())
    assert rebuilt.recovery_points_added == 1
    report = await env.maintenance.run_once()
    assert report.pruned == (old.id,)
    catalog_ids, pool_ids = await env.rp_ids()
    assert old.id not in catalog_ids and old.id not in pool_ids


async def test_failed_gc_is_a_failed_job_and_an_alert_until_it_succeeds(env: Env) -> None:
    w = env.w
    await env.maintenance.run_once()  # a fresh install: the first GC is a day away
    rp = await env.backup(0, [piece("d")])
    env.pool.store.path_of(rp.manifest_chunks[0]).unlink()  # the manifest is damaged
    w.at(T0 + 24 * HOUR)
    report = await env.maintenance.run_once()
    assert report.gc_job is not None and report.gc_job.state == JobState.FAILED
    assert "deleted nothing" in (report.gc_job.error or "")
    (alert,) = await w.catalog.open_alerts_of_kind(MAINTENANCE_FAILED)
    assert alert.subject == "gc" and report.gc_job.id in alert.message
    assert await w.catalog.get_server_state(LAST_GC_KEY) == repr(T0)  # not advanced
    await env.pool.delete_recovery_point(rp.id)
    await w.catalog.remove_recovery_point(rp.id)
    report = await env.maintenance.run_once()  # GC is still due: the last one failed
    assert report.gc_job is not None and report.gc_job.state == JobState.SUCCEEDED
    assert await w.catalog.open_alerts_of_kind(MAINTENANCE_FAILED) == []


async def test_job_history_keeps_the_configured_days(env: Env) -> None:
    w = env.w
    w.configure(jobs=JobsSettings(job_history_days=30))
    done = await w.jobs.start_backup(w.sources[0].id)
    await w.finish(done, "succeeded")
    waiting = await w.jobs.start_backup(w.sources[1].id)  # queued for ever: not history
    w.at(T0 + 10 * DAY)
    recent = await w.catalog.create_job(JobKind.RESTORE, w.agent_id, None, {"items": []})
    await w.catalog.transition_job(recent.id, JobState.CANCELLED)
    w.at(T0 + 30 * DAY)
    assert (await env.maintenance.run_once()).jobs_deleted == 0
    w.at(T0 + 30 * DAY + 1)
    report = await env.maintenance.run_once()
    assert report.jobs_deleted == 1  # ended at T0, 30 days and a second ago
    left = {j.id for j in await w.catalog.list_jobs(limit=100)}
    assert done.id not in left and {waiting.id, recent.id} <= left


async def test_run_keeps_the_interval_on_the_injected_clock(env: Env) -> None:
    w = env.w
    w.configure(scheduler=SchedulerSettings(timezone="UTC", tick_seconds=1))
    task = asyncio.create_task(env.maintenance.run())
    try:
        await eventually(lambda: w.catalog.get_server_state(LAST_GC_KEY), lambda v: v is not None)
        old = await env.backup(0, [piece("p")])
        w.at(T0 + HOUR)
        await env.backup(0, [piece("q")])
        w.at(T0 + 2 * DAY)  # 47 h later on the clock: the next round prunes
        await eventually(env.rp_ids, lambda ids: old.id not in ids[1])
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_cloud_gc_waits_a_day_after_the_first_start(
    tmp_path: Path, env: Env, clock: FakeClock
) -> None:
    """A fresh install with a vault runs no cloud GC at its first maintenance (it made a
    stop right after the first start slow); it runs a day later."""
    w = env.w
    data_dir = tmp_path / "server"
    w.configure(server=dataclasses.replace(w.config.server, data_dir=data_dir))
    vaults = registry(data_dir, clock)
    await vaults.register(
        (await vaults.new_vault(folder_spec(tmp_path / "vault"))).to_doc(), PASSPHRASE
    )
    online = OnlineBackupRunner(
        w.catalog,
        env.pool,
        vaults,
        lambda: w.config,
        clock,
        scratch=ScratchGuard(w.catalog, None, lambda: w.config),
        opener=plain_opener,
    )
    env.maintenance.online = online
    try:
        first = await env.maintenance.run_once()
        assert first.cloud_gc_job is None
        assert await w.catalog.get_server_state(LAST_CLOUD_GC_KEY) == repr(T0)
        w.at(T0 + DAY - 1)
        assert (await env.maintenance.run_once()).cloud_gc_job is None
        w.at(T0 + DAY)
        job = (await env.maintenance.run_once()).cloud_gc_job
        assert job is not None and job.state is JobState.SUCCEEDED, job
    finally:
        await online.close()


async def test_stop_cancels_a_running_gc_promptly(env: Env) -> None:
    """A server stop during GC: the job fails as retryable and the engine stops at its next
    step (a shard) instead of sweeping the whole pool while shutdown waits for it."""
    w = env.w
    await env.maintenance.run_once()  # fresh install: records the start
    rp = await env.backup(0, [piece("g")])
    await env.pool.delete_recovery_point(rp.id)
    await w.catalog.remove_recovery_point(rp.id)  # its chunks are garbage now
    w.at(T0 + 24 * HOUR)
    entered, release = threading.Event(), threading.Event()
    shards = env.pool.store.shards

    def held_shards() -> list[Path]:
        # The sweep's first step waits until the test has cancelled the task.
        entered.set()
        release.wait(30)
        return shards()

    env.pool.store.shards = held_shards  # type: ignore[method-assign]
    task = asyncio.create_task(env.maintenance.run_once())
    assert await asyncio.to_thread(entered.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    # The GC thread ends at its next check (its watcher list goes away as it returns).
    await eventually(lambda: asyncio.sleep(0, env.pool.marks.watchers), lambda v: v == [])
    env.pool.store.shards = shards  # type: ignore[method-assign]
    (gc_job,) = [j for j in await w.catalog.list_jobs(limit=100) if j.kind == JobKind.GC]
    assert gc_job.state == JobState.FAILED and gc_job.retryable is True, gc_job
    assert gc_job.error == "the server shut down while it ran"
    assert env.pool.present([chunk_id_of(piece("g"))]) == {chunk_id_of(piece("g"))}
    report = await env.maintenance.run_once(force_gc=True)  # the next GC does the work
    assert report.gc is not None and report.gc.swept_chunks > 0
    assert env.pool.present([chunk_id_of(piece("g"))]) == set()
