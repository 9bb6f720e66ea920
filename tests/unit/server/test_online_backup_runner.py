"""Online backup jobs (server/online_backup.py) with a real catalog, a real pool and a real
folder vault registered through `VaultRegistry` (test-only KDF parameters). Retries: the
budget comes from ``online.retry_budget_seconds``, and each retry shows in the job's
progress and in one log line; a fault injector over the real folder backend fails puts as a
refused connection would, for as long as a test keeps its outage on.

File data is seeded (`random_bytes`), never os.urandom: with 1 MiB average chunks (up to
8 MiB) and a 4 MiB scratch floor, unseeded data now and then made a chunk bigger than the
bound, and the job failed with ScratchTooSmallError instead of doing what the test checks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from server.catalog import Catalog, JobKind, JobState, recovery_point_labels
from server.catalog_errors import ConflictError
from server.catalog_rows import AgentRow, DataSourceRow
from server.config import OnlineSettings, ServerConfig
from server.context import ServerContext
from server.metrics import ScratchGauges, take_snapshot
from server.online_backup import (
    NoDiskRecoveryPointError,
    NoVaultRegisteredError,
    OnlineBackupRunner,
    retry_status,
)
from server.scratch_bound import ScratchGuard
from server.vault_registry import VaultRegistry
from storage_pool import RecoveryPoint, StoragePool
from storage_pool.vault.backend import PutData, Throttled, TransientError, VaultBackend
from storage_pool.vault.folder import FolderBackend
from storage_pool.vault.retry import RetryEvent, RetryPolicy
from storage_pool.vault.scratch import scratch_usage
from tests.unit.pool.file_backup import file_entries
from tests.unit.pool.pool_opener import PoolOpener
from tests.unit.pool.sample_data import random_bytes
from tests.unit.server.catalog_fixture import FakeClock
from tests.unit.server.cloud_fixture import MiB, online_config
from tests.unit.server.vault_fixture import PASSPHRASE, folder_spec, registry
from tests.unit.vault.online_support import CountingBackend, DelegatingBackend


@dataclass
class Site:
    data_dir: Path
    catalog: Catalog
    pool: StoragePool
    registry: VaultRegistry
    config: ServerConfig
    agent: AgentRow
    ds: DataSourceRow


@pytest.fixture
async def site(tmp_path: Path, catalog: Catalog, clock: FakeClock, pools: PoolOpener) -> Site:
    data_dir = tmp_path / "server"
    token, _ = await catalog.create_agent_token(600)
    agent, _, _ = await catalog.register_agent(token, None, "web01")
    ds = await catalog.add_data_source(agent.id, "files", ["/srv"], [])
    return Site(
        data_dir,
        catalog,
        await pools.create(),
        registry(data_dir, clock),
        online_config(data_dir),
        agent,
        ds,
    )


async def register_vault(s: Site, root: Path) -> None:
    creds = (await s.registry.new_vault(folder_spec(root))).to_doc()
    await s.registry.register(creds, PASSPHRASE)


async def backup(s: Site, files: Mapping[bytes, bytes]) -> RecoveryPoint:
    chunker = s.pool.new_chunker()
    chunked = {p: [bytes(v) for v in chunker.cut(d)] for p, d in files.items()}
    async with s.pool.session(s.ds.id) as session:
        for pieces in chunked.values():
            await session.put_data(pieces)
        await session.add_entries(file_entries(chunked))
        rp = await session.commit(recovery_point_labels(s.agent, s.ds, None))
    await s.catalog.add_recovery_point(rp)
    return rp


def runner(s: Site, clock: FakeClock, **kwargs: Any) -> OnlineBackupRunner:
    return OnlineBackupRunner(
        s.catalog,
        s.pool,
        s.registry,
        lambda: s.config,
        clock,
        scratch=ScratchGuard(s.catalog, None, lambda: s.config),
        **kwargs,
    )


async def test_job_copies_the_latest_rp_and_records_it(
    tmp_path: Path, site: Site, clock: FakeClock
) -> None:
    await register_vault(site, tmp_path / "vault")
    await backup(site, {b"a.bin": random_bytes(3 * MiB, 1)})
    clock.now += 3600
    newest = await backup(site, {b"a.bin": random_bytes(3 * MiB, 2), b"b.txt": b"hello" * 1000})
    online = runner(site, clock)
    try:
        job = await online.start(site.ds.id)
        assert job.kind is JobKind.ONLINE_BACKUP and job.data_source_id == site.ds.id
        done = await online.run_job(job)
        assert done.state is JobState.SUCCEEDED, done.error
        assert done.result is not None
        assert done.result["disk_rp_id"] == newest.id
        assert done.result["bytes_uploaded"] > 3 * MiB
        assert 0 < done.result["scratch_high_water"] <= done.result["scratch_bound"]
        (row,) = await site.catalog.list_online_rps(site.ds.id)
        assert row.id == done.result["online_rp_id"]
        assert row.disk_rp_id == newest.id and row.job_id == job.id
        assert row.logical_bytes == newest.logical_bytes
        assert scratch_usage(site.config.scratch_path) == 0

        # Nothing new on disk: the second job uploads nothing.
        again = await online.run_job(await online.start(site.ds.id))
        assert again.state is JobState.SUCCEEDED, again.error
        assert again.result is not None
        assert again.result["already_online"] is True
        assert again.result["bytes_uploaded"] == 0
        assert len(await site.catalog.list_online_rps(site.ds.id)) == 1
    finally:
        await online.close()


async def test_a_new_rp_uploads_only_new_chunks(
    tmp_path: Path, site: Site, clock: FakeClock
) -> None:
    await register_vault(site, tmp_path / "vault")
    big = random_bytes(4 * MiB, 3)
    await backup(site, {b"big": big})
    online = runner(site, clock)
    try:
        first = await online.run_job(await online.start(site.ds.id))
        assert first.state is JobState.SUCCEEDED, first.error
        clock.now += 3600
        await backup(site, {b"big": big, b"small": b"x" * 10_000})
        second = await online.run_job(await online.start(site.ds.id))
        assert second.state is JobState.SUCCEEDED, second.error
        assert second.result is not None and first.result is not None
        assert 0 < second.result["bytes_uploaded"] < first.result["bytes_uploaded"] // 4
        assert len(await site.catalog.list_online_rps(site.ds.id)) == 2
    finally:
        await online.close()


async def test_refusals_name_the_problem(tmp_path: Path, site: Site, clock: FakeClock) -> None:
    online = runner(site, clock)
    with pytest.raises(NoVaultRegisteredError, match="no vault is registered"):
        await online.start(site.ds.id)
    await register_vault(site, tmp_path / "vault")
    with pytest.raises(NoDiskRecoveryPointError, match="no disk recovery point"):
        await online.start(site.ds.id)
    await backup(site, {b"f": b"data" * 100})
    job = await online.start(site.ds.id)
    with pytest.raises(ConflictError, match=f"online backup job {job.id}"):
        await online.start(site.ds.id)
    cancelled = await online.cancel(job)
    assert cancelled.state is JobState.CANCELLED
    assert (await online.start(site.ds.id)).state is JobState.QUEUED
    await online.close()


async def test_transient_failure_is_retryable_and_the_next_job_resumes(
    tmp_path: Path, site: Site, clock: FakeClock
) -> None:
    await register_vault(site, tmp_path / "vault")
    await backup(site, {b"a.bin": random_bytes(6 * MiB, 4)})
    wrappers: list[CountingBackend] = []

    def failing(spec: Mapping[str, Any]) -> VaultBackend:
        backend = CountingBackend(FolderBackend(Path(spec["path"])), fail_after=3)
        wrappers.append(backend)
        return backend

    no_retry = RetryPolicy(initial=0.01, maximum=0.01, budget=0.0, max_attempts=1)
    broken = runner(site, clock, opener=failing, retry=no_retry)
    try:
        failed = await broken.run_job(await broken.start(site.ds.id))
    finally:
        await broken.close()
    assert failed.state is JobState.FAILED
    assert failed.retryable is True
    assert failed.error is not None and "injected outage" in failed.error
    assert scratch_usage(site.config.scratch_path) == 0
    assert await site.catalog.list_online_rps(site.ds.id) == []
    uploaded_before = {name for name, _ in wrappers[0].puts}
    assert uploaded_before  # some packs made it before the outage

    counted: list[CountingBackend] = []

    def counting(spec: Mapping[str, Any]) -> VaultBackend:
        backend = CountingBackend(FolderBackend(Path(spec["path"])))
        counted.append(backend)
        return backend

    healthy = runner(site, clock, opener=counting)
    try:
        done = await healthy.run_job(await healthy.start(site.ds.id))
    finally:
        await healthy.close()
    assert done.state is JobState.SUCCEEDED, done.error
    assert not uploaded_before & {name for name, _ in counted[0].puts}
    assert len(await site.catalog.list_online_rps(site.ds.id)) == 1


async def test_stop_job_cancels_at_a_safe_point(
    tmp_path: Path, site: Site, clock: FakeClock
) -> None:
    """Guards against a flaky setup: unseeded data sometimes made a chunk bigger than the
    4 MiB scratch floor, and the job failed before its first put instead of stopping."""
    await register_vault(site, tmp_path / "vault")
    data = random_bytes(8 * MiB, 5)
    largest = max(len(c) for c in site.pool.new_chunker().cut(data))
    # Room for the blob's frame, seal and trailer rows in the bound, with slack.
    assert largest + 64 * 1024 <= site.config.scratch.min_bytes, largest
    await backup(site, {b"a.bin": data})
    online = runner(site, clock)
    job = await online.start(site.ds.id)

    stopped: list[bool] = []

    def stop_on_first_put(spec: Mapping[str, Any]) -> VaultBackend:
        backend = CountingBackend(FolderBackend(Path(spec["path"])))

        def on_put() -> None:
            if not stopped:
                stopped.append(True)
                entry = online._running[job.id]
                entry.cancelled_by_operator = True
                entry.stop.set()

        backend.on_put = on_put
        return backend

    online._opener = stop_on_first_put
    try:
        done = await online.run_job(job)
    finally:
        await online.close()
    assert done.state is JobState.CANCELLED, done.error
    assert scratch_usage(site.config.scratch_path) == 0
    assert await site.catalog.list_online_rps(site.ds.id) == []


# -- retries: budget from the config, visible in progress and logs ---------------------


class Outage(DelegatingBackend):
    """A real backend whose puts fail with a connect error while `down` is set."""

    def __init__(self, inner: VaultBackend, down: asyncio.Event) -> None:
        super().__init__(inner)
        self.down = down
        self.failed_puts = 0

    async def put(self, name: str, data: PutData, *, sha256: bytes | None = None) -> None:
        if self.down.is_set():
            self.failed_puts += 1
            raise TransientError(self.description, name, "connection refused", kind="connect")
        await self.inner.put(name, data, sha256=sha256)


def outage_opener(down: asyncio.Event, opened: list[Outage] | None = None) -> Any:
    def opener(spec: Mapping[str, Any]) -> VaultBackend:
        backend = Outage(FolderBackend(Path(spec["path"])), down)
        if opened is not None:
            opened.append(backend)
        return backend

    return opener


async def test_budget_comes_from_the_config(tmp_path: Path, site: Site, clock: FakeClock) -> None:
    """Guards against the hard-coded 300 s budget: with 1 s configured an outage that
    never ends fails the job as retryable (at the default it would wait five minutes)."""
    site.config = replace(site.config, online=OnlineSettings(pack_mib=1, retry_budget_seconds=1))
    await register_vault(site, tmp_path / "vault")
    await backup(site, {b"a.bin": random_bytes(2 * MiB, 6)})
    down = asyncio.Event()
    online = runner(site, clock, opener=outage_opener(down))
    try:
        # The vault is opened (and its header read) before the outage starts.
        await online.open_vault()
        down.set()
        with capture_logs() as logs:
            failed = await online.run_job(await online.start(site.ds.id))
    finally:
        await online.close()
    assert failed.state is JobState.FAILED and failed.retryable is True, failed
    assert failed.error is not None and "connection refused" in failed.error
    retries = [e for e in logs if e["event"] == "vault_retry"]
    assert all(e["budget"] == 1.0 and e["kind"] == "connect" for e in retries), retries


async def test_retries_show_in_progress_and_logs(
    tmp_path: Path, site: Site, clock: FakeClock
) -> None:
    await register_vault(site, tmp_path / "vault")
    await backup(site, {b"a.bin": random_bytes(2 * MiB, 7)})
    down = asyncio.Event()
    opened: list[Outage] = []
    online = runner(site, clock, opener=outage_opener(down, opened))
    try:
        await online.open_vault()
        down.set()
        job = await online.start(site.ds.id)
        with capture_logs() as logs:
            task = asyncio.create_task(online.run_job(job))
            # The outage lasts until the job's progress says it is retrying.
            async with asyncio.timeout(60):
                while True:
                    progress = (await site.catalog.get_job(job.id)).progress or {}
                    if "status" in progress:
                        break
                    await asyncio.sleep(0.05)
            down.clear()
            done = await task
    finally:
        await online.close()
    status = progress["status"]
    assert status.startswith("retrying after connect error (attempt "), status
    assert status.endswith(" s of 300 s budget used)"), status
    assert progress["retries"] >= 1
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.result is not None and done.result["bytes_uploaded"] > 2 * MiB
    retries = [e for e in logs if e["event"] == "vault_retry"]
    # Every failed put was retried (the outage ended inside the budget), each logged once.
    (backend,) = opened
    assert len(retries) == backend.failed_puts >= progress["retries"]
    first = retries[0]
    assert first["job_id"] == job.id and first["call"] == "put" and first["kind"] == "connect"
    assert first["attempt"] == 2 and first["delay"] >= 0 and first["budget"] == 300.0


def test_status_words() -> None:
    def event(err: TransientError, attempt: int, spent: float) -> RetryEvent:
        return RetryEvent("put", err, attempt, 1.0, spent, 300.0)

    connect = TransientError("b", "n", "refused", kind="connect")
    assert retry_status(event(connect, 2, 41.4)) == (
        "retrying after connect error (attempt 3, 41 s of 300 s budget used)"
    )
    throttled = Throttled("b", "n", "slow down", retry_after=5)
    assert retry_status(event(throttled, 1, 5)).startswith("retrying after throttling (")
    server = TransientError("b", "n", "503", kind="server_error")
    assert "after server error (" in retry_status(event(server, 1, 1))


class SamplingBackend(DelegatingBackend):
    """A real folder backend that awaits `sample` before each put, i.e. while the job
    holds the pack it uploads in scratch."""

    def __init__(self, inner: VaultBackend, sample: Callable[[], Awaitable[None]]) -> None:
        super().__init__(inner)
        self.sample = sample

    async def put(self, name: str, data: PutData, *, sha256: bytes | None = None) -> None:
        await self.sample()
        await super().put(name, data, sha256=sha256)


async def test_scratch_in_use_follows_the_running_job_and_feeds_metrics(
    tmp_path: Path, site: Site, clock: FakeClock
) -> None:
    """/metrics' live scratch gauges come from `OnlineBackupRunner.scratch_in_use`, sampled
    here inside the real job's uploads."""
    await register_vault(site, tmp_path / "vault")
    await backup(site, {b"a.bin": random_bytes(6 * MiB, 8)})
    samples: list[tuple[tuple[int, int | None], ScratchGauges]] = []
    online: OnlineBackupRunner | None = None
    ctx = ServerContext(
        config=site.config,
        catalog=site.catalog,
        pool=site.pool,
        operator_token="t",
        ca_pem=b"",
        mqtt_url="mqtt://127.0.0.1:1",
        server_url="http://127.0.0.1:1",
    )

    async def sample() -> None:
        assert online is not None
        live = online.scratch_in_use()
        samples.append((live, (await take_snapshot(ctx)).scratch))

    def sampling(spec: Mapping[str, Any]) -> VaultBackend:
        return SamplingBackend(FolderBackend(Path(spec["path"])), sample)

    online = runner(site, clock, opener=sampling)
    ctx.online = online
    assert online.scratch_in_use() == (0, None)  # no job yet in this process
    try:
        done = await online.run_job(await online.start(site.ds.id))
    finally:
        await online.close()
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.result is not None
    bound, high = done.result["scratch_bound"], done.result["scratch_high_water"]
    assert max(in_use for (in_use, _), _ in samples) > 0, samples  # packs were held
    for (in_use, live_high), gauges in samples:
        assert live_high is not None and in_use <= live_high <= high <= bound
        assert gauges.used_bytes >= in_use and gauges.bound_bytes == bound
        assert gauges.high_water_bytes == live_high
    # Idle: nothing in use, the finished job's mark, also in /metrics.
    assert online.scratch_in_use() == (0, high)
    idle = (await take_snapshot(ctx)).scratch
    assert (idle.used_bytes, idle.high_water_bytes) == (0, high)
