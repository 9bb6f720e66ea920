"""Verify jobs (server/verify_jobs.py) on a real pool and a real folder vault registered
through `VaultRegistry`: the pool is repaired from the vault, damage in the vault is found
and named by the online RPs it breaks, sampling checks a subset, and Stop-Job (through
JobManager.cancel, as the daemon wires it) cancels a verify job."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.catalog import JobKind, JobState
from server.catalog_errors import ConflictError, InvalidStateError
from server.catalog_rows import JobTrigger
from server.job_stop import server_cancel_by_kind
from server.jobs import JobLimits, JobManager
from server.vault_sync import registered_vault
from server.verify_jobs import (
    VerifyParamError,
    VerifyRunner,
    VerifyTierError,
    verify_cloud,
    verify_disk,
)
from storage_pool import StoragePool
from storage_pool.chunk_store import ChunkFile
from tests.unit.pool.file_backup import read_back
from tests.unit.pool.pool_opener import PoolOpener
from tests.unit.server.catalog_fixture import FakeClock
from tests.unit.server.cloud_fixture import (
    Site,
    agent_and_source,
    backup,
    go_online,
    new_vault,
    register,
    site,
)
from tests.unit.server.schedule_fixture import Sent
from tests.unit.vault.online_support import tree


def _biggest_chunk(pool: StoragePool) -> ChunkFile:
    return max(pool.store.iter_files(), key=lambda cf: cf.size)


def _flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x20
    path.write_bytes(bytes(data))


def _packs(vault_root: Path, skip: set[str]) -> list[Path]:
    """The vault's objects other than `skip`, biggest first: the packs."""
    files = [p for p in (vault_root / "data").rglob("*") if p.is_file() and p.name not in skip]
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


async def _online_site(s: Site, tmp_path: Path, seed: int) -> tuple[dict[bytes, bytes], str, str]:
    """A registered vault holding one online RP; (files, disk RP id, online RP id)."""
    await register(s, await new_vault(s, tmp_path / "vault"))
    agent, ds = await agent_and_source(s.catalog, "web01")
    files = tree(seed, files=4, size=80_000)
    rp = await backup(s, agent, ds, files)
    row = await go_online(s, rp, tmp_path / "scratch")
    return files, rp.id, row.id


async def test_disk_verify_repairs_a_damaged_chunk_from_the_vault(
    tmp_path: Path, pools: PoolOpener, clock: FakeClock
) -> None:
    async with site(tmp_path, pools, "a", clock) as s:
        files, rp_id, _ = await _online_site(s, tmp_path, 1)
        bad = _biggest_chunk(s.pool)
        _flip(bad.path)

        doc = await verify_disk(s.pool, s.registry)
        assert doc["damaged_chunks"] == 1 and doc["repaired_chunks"] == 1
        (problem,) = doc["problems"]
        assert problem["chunk"] == bad.id.hex() and problem["kind"] == "corrupt"
        assert problem["recovery_points"] == [rp_id] and problem["repaired"]
        assert doc["broken_recovery_points"] == [] and doc["repair_source"] == "vault"
        assert await read_back(s.pool, await s.pool.get_recovery_point(rp_id)) == files

        again = await verify_disk(s.pool, s.registry)
        assert again["damaged_chunks"] == 0


async def test_disk_verify_without_a_vault_reports_the_broken_rp(
    tmp_path: Path, pools: PoolOpener, clock: FakeClock
) -> None:
    async with site(tmp_path, pools, "a", clock) as s:
        agent, ds = await agent_and_source(s.catalog, "web01")
        rp = await backup(s, agent, ds, tree(2, files=3, size=80_000))
        bad = _biggest_chunk(s.pool)
        _flip(bad.path)
        runner = VerifyRunner(s.catalog, s.pool, s.registry, clock)
        with pytest.raises(VerifyTierError, match="no vault is registered"):
            await runner.start("cloud")
        with pytest.raises(VerifyParamError, match="sample"):
            await runner.start("disk", sample=1.5)
        job = await runner.start("Disk")
        assert job.kind is JobKind.VERIFY and job.params["tier"] == "disk"
        with pytest.raises(ConflictError, match="already queued"):
            await runner.start("disk")
        done = await runner.run_job(job)
        assert done.state is JobState.FAILED and done.error is not None
        assert "1 problem" in done.error
        assert done.result is not None
        doc = done.result
        assert doc["repair_unavailable"] == "no vault is registered"
        (problem,) = doc["problems"]
        assert problem["chunk"] == bad.id.hex() and not problem["repaired"]
        assert doc["broken_recovery_points"] == [rp.id]


async def test_repaired_job_succeeds_with_warnings(
    tmp_path: Path, pools: PoolOpener, clock: FakeClock
) -> None:
    async with site(tmp_path, pools, "a", clock) as s:
        files, rp_id, _ = await _online_site(s, tmp_path, 3)
        _flip(_biggest_chunk(s.pool).path, 0.9)
        runner = VerifyRunner(s.catalog, s.pool, s.registry, clock)
        done = await runner.run_job(await runner.start())
        assert done.state is JobState.SUCCEEDED_WITH_WARNINGS, done.error
        assert done.warnings == 1
        assert await read_back(s.pool, await s.pool.get_recovery_point(rp_id)) == files
        clean = await runner.run_job(await runner.start("disk"))
        assert clean.state is JobState.SUCCEEDED, clean.error


async def test_cloud_verify_names_the_online_rp_a_flipped_byte_breaks(
    tmp_path: Path, pools: PoolOpener, clock: FakeClock
) -> None:
    async with site(tmp_path, pools, "a", clock) as s:
        _, rp_id, online_id = await _online_site(s, tmp_path, 4)
        runner = VerifyRunner(s.catalog, s.pool, s.registry, clock)
        clean = await runner.run_job(await runner.start("cloud"))
        assert clean.state is JobState.SUCCEEDED, clean.error
        assert clean.result is not None and clean.result["online_recovery_points"] == 1
        assert clean.result["checked_chunks"] == clean.result["chunks_total"] > 0

        _flip(_packs(tmp_path / "vault", {online_id})[0], 1 / 3)
        done = await runner.run_job(await runner.start("cloud"))
        assert done.state is JobState.FAILED and done.result is not None
        doc = done.result
        assert doc["damaged_chunks"] >= 1
        assert all(d["online_recovery_points"] == [online_id] for d in doc["damaged"])
        (broken,) = doc["broken_online_recovery_points"]
        assert broken["id"] == online_id and broken["disk_rp_id"] == rp_id
        # The pool's copy is untouched: the disk tier is clean.
        assert (await verify_disk(s.pool, s.registry))["damaged_chunks"] == 0


async def test_sample_checks_a_subset(tmp_path: Path, pools: PoolOpener, clock: FakeClock) -> None:
    async with site(tmp_path, pools, "a", clock) as s:
        await _online_site(s, tmp_path, 5)
        full = await verify_disk(s.pool, None)
        part = await verify_disk(s.pool, None, sample=0.3, seed=7)
        assert 0 < part["checked_chunks"] < full["checked_chunks"] == full["chunk_files"]
        async with registered_vault(s.registry) as vault:
            whole = await verify_cloud(vault)
            some = await verify_cloud(vault, sample=0.3, seed=7)
            same = await verify_cloud(vault, sample=0.3, seed=7)
        assert 0 < some["checked_chunks"] < whole["checked_chunks"] == whole["chunks_total"]
        assert some["checked_chunks"] == same["checked_chunks"]


class HeldListing:
    """Fault injection over the real chunk store: listing its files (verify's first step,
    in a pool thread) waits until `release` is set."""

    def __init__(self, pool: StoragePool) -> None:
        self.store = pool.store
        self.real = pool.store.iter_files
        self.entered = threading.Event()
        self.release = threading.Event()

    def __enter__(self) -> HeldListing:
        self.store.iter_files = self._held  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.store.iter_files = self.real  # type: ignore[method-assign]

    def _held(self) -> Iterator[ChunkFile]:
        self.entered.set()
        self.release.wait(30)
        yield from self.real()


async def test_stop_job_cancels_a_running_verify_job(
    tmp_path: Path, pools: PoolOpener, clock: FakeClock
) -> None:
    """Stop-Job used to refuse verify jobs ("cannot be stopped"). Through the same path as
    any job (JobManager.cancel -> server_cancel) a running one ends cancelled, without a
    partial result, and the runner goes on with the next job."""
    async with site(tmp_path, pools, "a", clock) as s:
        await _online_site(s, tmp_path, 6)
        runner = VerifyRunner(s.catalog, s.pool, s.registry, clock)
        jobs = JobManager(s.catalog, Sent(), JobLimits(4, 600.0), clock=clock)
        jobs.server_cancel = server_cancel_by_kind({JobKind.VERIFY: runner.cancel})
        with HeldListing(s.pool) as held:
            job = await runner.start("disk")
            task = asyncio.create_task(runner.run_job(job))
            assert await asyncio.to_thread(held.entered.wait, 30)
            assert (await s.catalog.get_job(job.id)).state is JobState.RUNNING
            stopped = await jobs.cancel(job.id)
            assert stopped.state is JobState.CANCELLED, stopped  # ended before the answer
            assert stopped.error == "cancelled by operator" and stopped.result is None
            assert (await task).state is JobState.CANCELLED  # the runner itself goes on
        again = await runner.run_job(await runner.start("disk"))  # not "already running"
        assert again.state is JobState.SUCCEEDED, again.error


async def test_stop_job_cancels_a_queued_verify_job_and_refuses_gc(
    tmp_path: Path, pools: PoolOpener, clock: FakeClock
) -> None:
    async with site(tmp_path, pools, "a", clock) as s:
        runner = VerifyRunner(s.catalog, s.pool, s.registry, clock)
        jobs = JobManager(s.catalog, Sent(), JobLimits(4, 600.0), clock=clock)
        jobs.server_cancel = server_cancel_by_kind({JobKind.VERIFY: runner.cancel})
        queued = await runner.start("disk")
        stopped = await jobs.cancel(queued.id)
        assert stopped.state is JobState.CANCELLED and stopped.error == "cancelled by operator"
        assert await runner.tick() == []  # nothing left to run
        gc = await s.catalog.create_server_job(JobKind.GC, {}, JobTrigger.MAINTENANCE)
        await s.catalog.transition_job(gc.id, JobState.RUNNING)
        with pytest.raises(InvalidStateError, match="gc jobs run on the server and cannot be"):
            await jobs.cancel(gc.id)


async def test_a_server_stop_fails_a_running_verify_job_as_retryable(
    tmp_path: Path, pools: PoolOpener, clock: FakeClock
) -> None:
    async with site(tmp_path, pools, "a", clock) as s:
        runner = VerifyRunner(s.catalog, s.pool, s.registry, clock)
        with HeldListing(s.pool) as held:
            job = await runner.start("disk")
            task = asyncio.create_task(runner.run_job(job))
            assert await asyncio.to_thread(held.entered.wait, 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        ended = await s.catalog.get_job(job.id)
        assert ended.state is JobState.FAILED and ended.retryable is True, ended
        assert ended.error == "the server shut down while it ran"
