"""Online backup jobs: the server copies a data source's latest disk RP into the vault.

`OnlineBackupRunner.start` creates ONLINE_BACKUP server jobs (no agent; one per data
source), refusing with a clear error when no vault is registered, when the data source has
no disk RP, or when an online backup of it is already queued or running. `run` executes
queued jobs one at a time, oldest first (each job commits the next generation of the
vault's catalog: two at once would race for it), each in this order:

  1. running; the data source's newest disk RP is chosen now (not when it was queued);
  2. the vault: unlocked through the registry (keys cached there, so no second KDF), the
     backend wrapped in `Retrying`, the location cache under ``data_dir/vault``; opened
     once per process and reopened after a failure. An empty cache next to a vault that
     holds packs is rebuilt from the vault first (a new data dir, a lost cache), so
     nothing the vault holds is uploaded again;
  3. the scratch bound (server/scratch_bound.py) becomes the job's `ScratchBudget`;
  4. `copy_recovery_point` (storage_pool/vault/uploader.py: scratch leftovers adopted,
     packs, segments, manifest, catalog commit), its progress stored in the job;
  5. the catalog's online RP row (`add_online_rp`, idempotent by manifest name);
  6. online retention of the data source (server/online_retention.py: its GFS set kept,
     the rest soft-deleted); a retention failure is logged and noted in the result, the
     backup stands. Then the job succeeds with the engine's counts, the scratch
     high-water mark and the bound.

One writer at a time: steps 2-6 run under `writer`, the process-wide lock every writer
of the vault holds (online jobs, and retention, purge and repack from maintenance), so
a purge never deletes the packs of a job that has not committed yet.

Failures: a transient backend error that outlived the retry budget fails the job as
retryable (the online scheduler tries again); integrity, auth, format and configuration
errors fail it for good with their message. Stop-Job sets the engine's stop event (the job
ends cancelled at the next safe point). A server stop (`shutdown`, then task
cancellation) fails a running job as retryable; the next job resumes it, uploading
nothing the vault already holds. The scratch area is empty after every job (the engine
deletes its files on success, failure and cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from server.catalog import Catalog, JobKind, JobRow, JobState
from server.catalog_errors import ConflictError, InvalidStateError
from server.catalog_rows import DataSourceRow, JobTrigger, RecoveryPointRow
from server.config import ServerConfig
from server.ids import DataSourceId, JobId
from server.loops import repeat
from server.online_retention import apply_online_retention
from server.scratch_bound import ScratchGuard
from server.vault_backends import open_backend
from server.vault_registry import NotRegisteredError, VaultRegistry, VaultRegistryError
from storage_pool import RecoveryPoint, StoragePool
from storage_pool.vault.backend import TransientError, VaultBackend, VaultBackendError
from storage_pool.vault.format_errors import VaultFormatError
from storage_pool.vault.location_cache import LocationCache
from storage_pool.vault.retry import Retrying, RetryPolicy
from storage_pool.vault.scratch import ScratchBudget, ScratchTooSmallError
from storage_pool.vault.throttle import TokenBucket
from storage_pool.vault.uploader import (
    OnlineBackupCancelled,
    OnlineBackupResult,
    OnlineProgress,
    copy_recovery_point,
)
from storage_pool.vault.vault import Vault

__all__ = [
    "ONLINE_RETRY",
    "GroupOnlineBackup",
    "NoDiskRecoveryPointError",
    "NoVaultRegisteredError",
    "OnlineBackupRunner",
]

log = structlog.get_logger()

# A job waits out a short cloud outage; past this budget it fails as retryable.
ONLINE_RETRY: Final = RetryPolicy(initial=1.0, maximum=30.0, budget=300.0)
PROGRESS_SECONDS: Final = 1.0
IDLE_SECONDS: Final = 1.0
SHUTDOWN_ERROR: Final = "the server shut down while it ran"

BackendOpener = Callable[[Mapping[str, Any]], VaultBackend]


def _plain_opener(spec: Mapping[str, Any]) -> VaultBackend:
    return open_backend(spec, retry=None)


class NoVaultRegisteredError(InvalidStateError):
    def __init__(self) -> None:
        super().__init__(
            "vault",
            "-",
            "no vault is registered with this server: online backups need one;"
            " run New-Vault and Register-Vault first",
        )


class NoDiskRecoveryPointError(InvalidStateError):
    def __init__(self, ds: DataSourceRow) -> None:
        super().__init__(
            "data source",
            ds.id,
            f"data source {ds.ref} has no disk recovery point to copy online:"
            " run Start-Backup first",
        )


@dataclass(frozen=True, slots=True)
class GroupOnlineBackup:
    jobs: list[JobRow]
    skipped: list[tuple[DataSourceRow, str]]


@dataclass(slots=True)
class _Running:
    task: asyncio.Task[None] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled_by_operator: bool = False


def _result_doc(
    result: OnlineBackupResult, disk_rp_id: str, bound: int, protected: int
) -> dict[str, Any]:
    return {
        "online_rp_id": result.manifest_name,
        "disk_rp_id": disk_rp_id,
        "sequence": result.sequence,
        "catalog_generation": result.catalog_generation,
        "already_online": result.already_online,
        "chunks_total": result.chunks_total,
        "chunks_uploaded": result.chunks_uploaded,
        "packs_uploaded": result.packs_uploaded,
        "packs_adopted": result.packs_adopted,
        "bytes_uploaded": result.bytes_uploaded,
        "scratch_high_water": result.scratch_high_water,
        "scratch_bound": bound,
        "protected_bytes": protected,
    }


def _progress_doc(p: OnlineProgress, bound: int) -> dict[str, Any]:
    return {
        "chunks_total": p.chunks_total,
        "chunks_to_upload": p.chunks_to_upload,
        "chunks_packed": p.chunks_packed,
        "packs_uploaded": p.packs_uploaded,
        "bytes_uploaded": p.bytes_uploaded,
        "scratch_bound": bound,
    }


class OnlineBackupRunner:
    def __init__(
        self,
        catalog: Catalog,
        pool: StoragePool,
        registry: VaultRegistry,
        config_provider: Callable[[], ServerConfig],
        clock: Callable[[], float],
        *,
        scratch: ScratchGuard | None = None,
        retry: RetryPolicy | None = ONLINE_RETRY,
        opener: BackendOpener = _plain_opener,
        throttle: TokenBucket | None = None,
    ) -> None:
        self._catalog = catalog
        self._pool = pool
        self._registry = registry
        self._config = config_provider
        self._clock = clock
        self._scratch = (
            scratch if scratch is not None else ScratchGuard(catalog, None, config_provider)
        )
        self._retry = retry
        self._opener = opener
        self.throttle = throttle  # uploads wait on it (Set-Throttling, server/throttling.py)
        self._start_lock = asyncio.Lock()
        self._vault_lock = asyncio.Lock()
        # The vault's one writer at a time (module docstring); not reentrant.
        self.writer = asyncio.Lock()
        self._vault: Vault | None = None
        self._vault_key: tuple[str, int] | None = None
        self._running: dict[JobId, _Running] = {}
        self._wake = asyncio.Event()
        self._closing = False

    # -- starting jobs -----------------------------------------------------------------

    async def active_for(self, data_source_id: DataSourceId) -> JobRow | None:
        for state in (JobState.QUEUED, JobState.RUNNING):
            for job in await self._catalog.list_jobs(
                state=state, data_source_id=data_source_id, limit=10_000
            ):
                if job.kind is JobKind.ONLINE_BACKUP:
                    return job
        return None

    async def start(
        self,
        data_source: str,
        *,
        trigger: JobTrigger = JobTrigger.MANUAL,
        attempt: int = 1,
        scheduled_for: float | None = None,
    ) -> JobRow:
        """Queue an online backup of `data_source` (id or agent:name)."""
        ds = await self._catalog.get_data_source(data_source)
        async with self._start_lock:
            if ds.removed_at is not None:
                raise InvalidStateError("data source", ds.id, f"data source {ds.ref} is removed")
            if await self._registry.registration() is None:
                raise NoVaultRegisteredError()
            if not await self._catalog.list_recovery_points(data_source_id=ds.id):
                raise NoDiskRecoveryPointError(ds)
            active = await self.active_for(ds.id)
            if active is not None:
                raise ConflictError(
                    "data source",
                    ds.id,
                    f"online backup job {active.id} of data source {ds.ref} is already"
                    f" {active.state.value}",
                )
            job = await self._catalog.create_server_job(
                JobKind.ONLINE_BACKUP,
                {"data_source_name": ds.name, "agent_name": ds.agent_name},
                trigger,
                ds.id,
                attempt=attempt,
                scheduled_for=scheduled_for,
            )
        log.info("online_backup_queued", job_id=job.id, data_source=ds.id, trigger=trigger.value)
        self._wake.set()
        return job

    async def start_group(self, ref: str) -> GroupOnlineBackup:
        """One online backup per member of a live group; refused members are skipped with
        their reason (no vault refuses the whole group)."""
        group = await self._catalog.get_group(ref)
        if group.removed_at is not None:
            raise InvalidStateError(
                "protection group", group.id, f"protection group {group.name} is removed"
            )
        if await self._registry.registration() is None:
            raise NoVaultRegisteredError()
        members = await self._catalog.group_members(group.id)
        if not members:
            raise InvalidStateError(
                "protection group", group.id, f"protection group {group.name} has no data sources"
            )
        started: list[JobRow] = []
        skipped: list[tuple[DataSourceRow, str]] = []
        for ds in members:
            try:
                started.append(await self.start(ds.id))
            except (ConflictError, InvalidStateError) as err:
                skipped.append((ds, str(err)))
        return GroupOnlineBackup(started, skipped)

    async def cancel(self, job: JobRow) -> JobRow:
        """Stop-Job: a queued job is cancelled; a running one stops at its next safe point."""
        if job.state is JobState.QUEUED:
            running = self._running.get(job.id)
            if running is None:
                return await self._catalog.transition_job(
                    job.id, JobState.CANCELLED, error="cancelled by operator"
                )
        running = self._running.get(job.id)
        if running is not None:
            running.cancelled_by_operator = not self._closing
            running.stop.set()
            log.info("online_backup_stop_requested", job_id=job.id)
        return await self._catalog.get_job(job.id)

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await repeat(
                self.tick,
                failed_event="online_tick_failed",
                interval=lambda: IDLE_SECONDS,
                wake=self._wake,
            )
        finally:
            await self._cancel_all()
            await self.close()

    async def tick(self) -> list[JobId]:
        """Start queued online jobs while there is room; returns the ids started."""
        if self._closing:
            return []
        queued = [
            j
            for j in await self._catalog.list_jobs(state=JobState.QUEUED, limit=10_000)
            if j.kind is JobKind.ONLINE_BACKUP and j.id not in self._running
        ]
        started: list[JobId] = []
        for job in sorted(queued, key=lambda j: j.created_at):
            if self._running:
                break
            entry = _Running()
            task = asyncio.create_task(self._execute(job, entry), name=f"online-{job.id}")
            entry.task = task
            self._running[job.id] = entry
            task.add_done_callback(functools.partial(self._finished, job.id))
            started.append(job.id)
        return started

    def _finished(self, job_id: JobId, _task: asyncio.Task[None]) -> None:
        self._running.pop(job_id, None)
        self._wake.set()

    async def wait_idle(self) -> None:
        """Until no online job of this runner is running (tests, shutdown)."""
        while tasks := {r.task for r in self._running.values() if r.task is not None}:
            await asyncio.wait(tasks)

    async def shutdown(self) -> None:
        """The server stops: running jobs stop at a safe point and fail as retryable."""
        self._closing = True
        for entry in self._running.values():
            entry.stop.set()

    async def _cancel_all(self) -> None:
        self._closing = True
        tasks = [r.task for r in self._running.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def close(self) -> None:
        async with self._vault_lock:
            await self._drop_vault()

    # -- one job -------------------------------------------------------------------------

    async def run_job(self, job: JobRow) -> JobRow:
        """Run one queued job here and now (tests; `run` does the same in a task)."""
        if self._running:
            raise InvalidStateError("job", job.id, "another online backup job is running")
        entry = _Running()
        self._running[job.id] = entry
        try:
            await self._execute(job, entry)
        finally:
            self._running.pop(job.id, None)
        return await self._catalog.get_job(job.id)

    async def _execute(self, job: JobRow, entry: _Running) -> None:
        try:
            await self._catalog.transition_job(job.id, JobState.RUNNING)
            await self._copy(job, entry)
        except asyncio.CancelledError:
            await self._fail(job.id, SHUTDOWN_ERROR, retryable=True)
            raise
        except OnlineBackupCancelled as err:
            if entry.cancelled_by_operator:
                await self._end(job.id, JobState.CANCELLED, error="cancelled by operator")
            else:
                await self._fail(job.id, SHUTDOWN_ERROR, retryable=True)
            log.info("online_backup_stopped", job_id=job.id, reason=str(err))
        except TransientError as err:
            await self._forget_vault()
            await self._fail(job.id, f"the vault storage failed: {err}", retryable=True)
        except (NotRegisteredError, NoVaultRegisteredError, NoDiskRecoveryPointError) as err:
            await self._fail(job.id, str(err), retryable=False)
        except ScratchTooSmallError as err:
            await self._fail(job.id, str(err), retryable=False)
        except (VaultBackendError, VaultFormatError, VaultRegistryError) as err:
            await self._forget_vault()
            await self._fail(job.id, f"{type(err).__name__}: {err}", retryable=False)
        except Exception as err:
            log.exception("online_backup_crashed", job_id=job.id)
            await self._forget_vault()
            await self._fail(
                job.id, f"internal error: {type(err).__name__}: {err}", retryable=False
            )

    async def _fail(self, job_id: JobId, error: str, *, retryable: bool) -> None:
        await self._end(job_id, JobState.FAILED, error=error, retryable=retryable)

    async def _end(
        self, job_id: JobId, state: JobState, *, error: str, retryable: bool | None = None
    ) -> None:
        log.warning("online_backup_ended", job_id=job_id, state=state.value, error=error)
        # The catalog write must happen even while this task is being cancelled.
        with contextlib.suppress(Exception):
            await asyncio.shield(
                self._catalog.transition_job(job_id, state, error=error, retryable=retryable)
            )

    async def _copy(self, job: JobRow, entry: _Running) -> None:
        if job.data_source_id is None:
            raise InvalidStateError("job", job.id, "an online backup job needs a data source")
        ds = await self._catalog.get_data_source(job.data_source_id)
        rps = await self._catalog.list_recovery_points(data_source_id=ds.id)
        if not rps:
            raise NoDiskRecoveryPointError(ds)
        disk_rp = rps[0]  # newest first
        pool_rp = await self._pool.get_recovery_point(disk_rp.id)
        async with self.writer:
            await self._copy_locked(job, entry, ds, disk_rp, pool_rp)

    async def _copy_locked(
        self,
        job: JobRow,
        entry: _Running,
        ds: DataSourceRow,
        disk_rp: RecoveryPointRow,
        pool_rp: RecoveryPoint,
    ) -> None:
        vault = await self._open_vault()
        protected, bound = await self._scratch.bound()
        config = self._config()
        budget = ScratchBudget(bound)
        latest: list[dict[str, Any]] = []

        def progress(p: OnlineProgress) -> None:
            latest[:] = [_progress_doc(p, bound)]

        writer = asyncio.create_task(self._write_progress(job.id, latest))
        try:
            result = await copy_recovery_point(
                self._pool,
                pool_rp,
                vault,
                config.scratch_path,
                budget,
                parallelism=config.online.parallelism,
                pack_size=config.online.pack_mib << 20,
                progress=progress,
                stop=entry.stop,
                agent=ds.agent_id,
                now_ns=now_ns_of(self._clock),
            )
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        await self._catalog.add_online_rp(
            result.manifest_name,
            ds.id,
            disk_rp_id=disk_rp.id,
            source_created_at=disk_rp.created_at,
            created_at=self._clock(),
            logical_bytes=disk_rp.logical_bytes,
            job_id=job.id,
            sequence=result.sequence,
        )
        doc = _result_doc(result, disk_rp.id, bound, protected)
        try:
            kept = await apply_online_retention(
                self._catalog, vault, config, self._clock(), data_sources={ds.id}
            )
            doc["retention_deleted"] = list(kept.deleted)
        except Exception as err:
            log.warning("online_retention_failed", job_id=job.id, error=str(err))
            doc["retention_error"] = f"{type(err).__name__}: {err}"
        await self._catalog.transition_job(job.id, JobState.SUCCEEDED, result=doc)
        log.info("online_backup_succeeded", job_id=job.id, data_source=ds.id, **doc)

    async def _write_progress(self, job_id: JobId, latest: list[dict[str, Any]]) -> None:
        written: dict[str, Any] | None = None
        while True:
            await asyncio.sleep(PROGRESS_SECONDS)
            if latest and latest[0] != written:
                written = latest[0]
                with contextlib.suppress(Exception):
                    await self._catalog.update_progress(job_id, written)

    # -- the vault -----------------------------------------------------------------------

    @property
    def scratch(self) -> ScratchGuard:
        return self._scratch

    async def has_vault(self) -> bool:
        return await self._registry.registration() is not None

    async def open_vault(self) -> Vault:
        """The registered vault, opened once per process (hold `writer` to change it)."""
        return await self._open_vault()

    async def forget_vault(self) -> None:
        """Reopen the vault next time (after a failure)."""
        await self._forget_vault()

    async def _open_vault(self) -> Vault:
        async with self._vault_lock:
            reg = await self._registry.registration()
            if reg is None:
                raise NoVaultRegisteredError()
            if self._vault is not None and self._vault_key == (
                reg.vault_id,
                reg.header_generation,
            ):
                return self._vault
            await self._drop_vault()
            unlocked = await self._registry.unlocked()
            inner = self._opener(unlocked.registration.backend)
            backend: VaultBackend = (
                inner
                if self._retry is None
                else Retrying(inner, self._retry, throttle=self.throttle)
            )
            cache_dir = self._config().data_dir / "vault"
            try:
                cache = await asyncio.to_thread(LocationCache, cache_dir, unlocked.keys.vault_id)
            except BaseException:
                await backend.close()
                raise
            vault = Vault(backend, unlocked.header, unlocked.keys, cache)
            try:
                if await asyncio.to_thread(cache.is_empty):
                    listing = await vault.scan()
                    if listing.packs or listing.segments:
                        report = await vault.rebuild_cache()
                        log.info("vault_cache_rebuilt", report=str(report))
            except BaseException:
                await vault.close()
                await backend.close()
                raise
            self._vault = vault
            self._vault_key = (
                unlocked.registration.vault_id,
                unlocked.registration.header_generation,
            )
            log.info("vault_opened", vault=repr(vault))
            return vault

    async def _forget_vault(self) -> None:
        async with self._vault_lock:
            await self._drop_vault()

    async def _drop_vault(self) -> None:
        vault, self._vault, self._vault_key = self._vault, None, None
        if vault is not None:
            with contextlib.suppress(Exception):
                await vault.close()
            with contextlib.suppress(Exception):
                await vault.backend.close()


def now_ns_of(clock: Callable[[], float]) -> Callable[[], int]:
    """Nanoseconds of `clock` (the real clock stays exact)."""
    if clock is time.time:
        return time.time_ns
    return lambda: round(clock() * 1e9)
