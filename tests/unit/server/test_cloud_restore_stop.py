"""Stop-Job on a held restore from the cloud (server/jobs.py `cancel`, server/cloud_restore.py):
the job ends cancelled and its re-seed task is cancelled and waited for. Stopped while it
fetches chunks, nothing of the RP is committed; stopped while the pool writes the RP's
record, the write ends and the catalog row follows, so no pool RP lacks its row. Real
catalog, pools and folder vault; the pool's writes are held by fault injection around the
real ones."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.catalog import JobState
from server.catalog_errors import NotFoundError
from server.cloud_restore import start_cloud_restore
from server.config import load_server_config
from server.context import ServerContext
from server.jobs import JobLimits, JobManager
from server.vault_sync import sync_registered
from storage_pool import RecoveryPoint, StoragePool
from storage_pool.errors import RecoveryPointNotFoundError
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


class Held:
    """Fault injection over one method of the real pool (run in a pool thread): the first
    call waits until `release` is set, then does the real work."""

    def __init__(self, pool: StoragePool, method: str) -> None:
        self.pool, self.method = pool, method
        self.real = getattr(pool, method)
        self.entered = threading.Event()
        self.release = threading.Event()

    def __enter__(self) -> Held:
        setattr(self.pool, self.method, self._held)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        setattr(self.pool, self.method, self.real)

    def _held(self, *args: Any) -> Any:
        if not self.entered.is_set():
            self.entered.set()
            self.release.wait(30)
        return self.real(*args)


@dataclass
class Restore:
    site: Site
    ctx: ServerContext
    jobs: JobManager
    rp: RecoveryPoint
    online_rp_id: str
    target_agent: str

    async def start(self) -> tuple[Any, asyncio.Task[Any]]:
        job = await start_cloud_restore(
            self.ctx,
            self.site.registry,
            self.online_rp_id,
            items=[],
            target_path="/restore",
            conflict="rename",
            target_agent=self.target_agent,
        )
        (task,) = [t for t in asyncio.all_tasks() if t.get_name() == f"cloud-restore-{job.id}"]
        return job, task


@asynccontextmanager
async def fresh_server(
    tmp_path: Path, pools: PoolOpener, clock: FakeClock
) -> AsyncIterator[Restore]:
    """Server "a" backs up and goes online; server "b", fresh, registers and syncs; an
    agent registered with "b" is the restore's target."""
    async with site(tmp_path, pools, "a", clock) as a:
        creds = await new_vault(a, tmp_path / "vault")
        await register(a, creds)
        agent, ds = await agent_and_source(a.catalog, "web01")
        rp = await backup(a, agent, ds, tree(7, files=4, size=200_000))
        row = await go_online(a, rp, tmp_path / "scratch")
    async with site(tmp_path, pools, "b", clock) as b:
        await register(b, creds)
        await sync_registered(b.registry, b.catalog)
        config = load_server_config(None, overrides={"server.data_dir": str(b.data_dir)})
        ctx = ServerContext(
            config=config,
            catalog=b.catalog,
            pool=b.pool,
            operator_token="t",
            ca_pem=b"",
            mqtt_url="mqtt://127.0.0.1:1",
            server_url="http://127.0.0.1:1",
            clock=clock,
        )
        ctx.jobs = JobManager(b.catalog, Sent(), JobLimits(4, 600.0), clock=clock)
        target, _ = await agent_and_source(b.catalog, "web02")
        yield Restore(b, ctx, ctx.jobs, rp, row.id, target.id)


async def in_pool(pool: StoragePool, rp_id: str) -> bool:
    try:
        await pool.get_recovery_point(rp_id)
    except RecoveryPointNotFoundError:
        return False
    return True


async def in_catalog(r: Restore, rp_id: str) -> bool:
    try:
        await r.site.catalog.get_recovery_point(rp_id)
    except NotFoundError:
        return False
    return True


async def test_stop_job_during_the_fetch_cancels_the_reseed(
    tmp_path: Path, pools: PoolOpener, clock: FakeClock
) -> None:
    """Guards against Stop-Job leaving the re-seed running: the job said cancelled while
    the server went on reading the vault and committed the RP afterwards."""
    async with fresh_server(tmp_path, pools, clock) as r:
        with Held(r.site.pool, "put_chunks") as held:
            job, task = await r.start()
            assert await asyncio.to_thread(held.entered.wait, 30)
            stopped = await r.jobs.cancel(job.id)
            # The re-seed has ended by the time Stop-Job answers.
            assert task.done()
        assert stopped.state is JobState.CANCELLED and stopped.error == "cancelled by operator"
        assert not r.jobs.is_held(job.id)
        assert not await in_pool(r.site.pool, r.rp.id)
        assert not await in_catalog(r, r.rp.id)
        assert (await r.site.catalog.get_job(job.id)).state is JobState.CANCELLED

        # Nothing was left half done: the next restore from the cloud completes its
        # re-seed and is released to the agent.
        again, task = await r.start()
        await task
        released = await r.site.catalog.get_job(again.id)
        assert released.state is JobState.RUNNING, released.error
        assert released.progress is not None and released.progress["phase"] == "restore"
        assert await in_pool(r.site.pool, r.rp.id) and await in_catalog(r, r.rp.id)


async def test_stop_job_while_the_pool_writes_the_rp_keeps_pool_and_catalog_in_step(
    tmp_path: Path, pools: PoolOpener, clock: FakeClock
) -> None:
    """A cancel that lands while the record is written: the write ends, and the catalog
    row is added before the task unwinds (no pool RP without its row)."""
    async with fresh_server(tmp_path, pools, clock) as r:
        with Held(r.site.pool, "write_recovery_point") as held:
            job, task = await r.start()
            assert await asyncio.to_thread(held.entered.wait, 30)
            stopping = asyncio.create_task(r.jobs.cancel(job.id))

            async def job_cancelled() -> bool:
                return (await r.site.catalog.get_job(job.id)).state is JobState.CANCELLED

            async with asyncio.timeout(30):
                while True:
                    if stopping.done() or await job_cancelled():
                        break
                    await asyncio.sleep(0.01)
            assert not task.done()  # held in the record write
            held.release.set()
            stopped = await stopping
            assert task.done() and task.cancelled()
        assert stopped.state is JobState.CANCELLED
        assert await in_pool(r.site.pool, r.rp.id)
        assert await in_catalog(r, r.rp.id)  # the row came with the record
