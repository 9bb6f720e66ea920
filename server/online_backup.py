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

Retries: the vault backend is wrapped in `Retrying` (storage_pool/vault/retry.py). Each
job takes its retry budget from ``online.retry_budget_seconds`` (live on SIGHUP) unless the
runner was given its own policy. Every retry is logged once (``vault_retry``: call, kind,
attempt, delay) and shown in the job's progress as ``status`` (e.g. "retrying after connect
error (attempt 3, 41 s of 300 s budget used)") with a ``retries`` count, until an upload
succeeds again.

Failures: a transient backend error that outlived the retry budget fails the job as
retryable (the online scheduler tries again); integrity, auth, format and configuration
errors fail it for good with their message. Stop-Job sets the engine's stop event (the job
ends cancelled at the next safe point). A server stop (`shutdown`, then task
cancellation) fails a running job as retryable; the next job resumes it, uploading
nothing the vault already holds. The scratch area is empty after every job (the engine
deletes its files on success, failure and cancellation).

The cloud policy (server/cloud_gate.py), when `gate` is set: `start` and `start_group`
raise `CloudPolicyRefused` when backups to the cloud are not allowed, a queued job is asked
again when it starts, and `stop_refused` (the gate's `on_change`, or a tick) fails queued
jobs at once and stops a running one at the engine's next safe point (between packs): it
ends failed with the policy's reason, not retryable; its uploaded packs stay in the vault
and the next job adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

import structlog

from server.catalog import Catalog, JobKind, JobRow, JobState
from server.catalog_errors import ConflictError, InvalidStateError
from server.catalog_rows import DataSourceRow, JobTrigger, RecoveryPointRow
from server.cloud_gate import CloudGate
from server.cloud_status import Operation
from server.config import ServerConfig
from server.ids import DataSourceId, JobId
from server.loops import repeat
from server.online_retention import apply_online_retention
from server.scratch_bound import ScratchGuard
from server.vault_backends import open_backend
from server.vault_registry import NotRegisteredError, VaultRegistry, VaultRegistryError
from storage_pool import RecoveryPoint, StoragePool
from storage_pool.vault.backend import (
    Throttled,
    TransientError,
    VaultBackend,
    VaultBackendError,
)
from storage_pool.vault.format_errors import VaultFormatError
from storage_pool.vault.location_cache import LocationCache
from storage_pool.vault.retry import RetryEvent, Retrying, RetryPolicy
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

# A job waits out a short cloud outage; past the budget (online.retry_budget_seconds
# replaces the one here) it fails as retryable.
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
    refused: str | None = None  # the cloud policy stopped it: the reason it ends with


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


_KIND_WORDS: Final = {"server_error": "server error", "other": "storage error"}


def retry_status(event: RetryEvent) -> str:
    """The job's progress line for a retry, e.g. "retrying after connect error (attempt 3,
    41 s of 300 s budget used)"."""
    err = event.error
    cause = "throttling" if isinstance(err, Throttled) else _KIND_WORDS.get(err.kind)
    cause = cause or f"{err.kind} error"
    return (
        f"retrying after {cause} (attempt {event.attempt + 1},"
        f" {event.spent:.0f} s of {event.budget:.0f} s budget used)"
    )


@dataclass(slots=True)
class _JobProgress:
    """What the progress writer stores: the engine's last report plus the retry note,
    which stays until an upload succeeds after it."""

    bound: int
    engine: dict[str, Any] | None = None
    retries: int = 0
    status: str | None = None
    uploaded_at_retry: int = 0

    def on_engine(self, p: OnlineProgress) -> None:
        self.engine = _progress_doc(p, self.bound)
        if self.status is not None and p.bytes_uploaded > self.uploaded_at_retry:
            self.status = None

    def on_retry(self, event: RetryEvent) -> None:
        self.retries += 1
        self.status = retry_status(event)
        self.uploaded_at_retry = (self.engine or {}).get("bytes_uploaded", 0)

    def doc(self) -> dict[str, Any] | None:
        if self.engine is None and not self.retries:
            return None
        out = dict(self.engine or {"scratch_bound": self.bound})
        if self.retries:
            out["retries"] = self.retries
        if self.status is not None:
            out["status"] = self.status
        return out


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
        gate: CloudGate | None = None,
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
        self.gate = gate  # the cloud policy; None: everything is allowed
        self._start_lock = asyncio.Lock()
        self._vault_lock = asyncio.Lock()
        # The vault's one writer at a time (module docstring); not reentrant.
        self.writer = asyncio.Lock()
        self._vault: Vault | None = None
        self._vault_key: tuple[str, int] | None = None
        self._running: dict[JobId, _Running] = {}
        self._wake = asyncio.Event()
        self._closing = False
        # The running job's scratch budget, and the high-water mark of the last one that
        # ran in this process (`scratch_in_use`, for /metrics).
        self._budget: ScratchBudget | None = None
        self._last_high_water: int | None = None

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
            if self.gate is not None:
                self.gate.check(Operation.BACKUP_TO_CLOUD)
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
            job = await self._create_job(ds, trigger, attempt, scheduled_for)
        log.info("online_backup_queued", job_id=job.id, data_source=ds.id, trigger=trigger.value)
        self._wake.set()
        return job

    async def _create_job(
        self,
        ds: DataSourceRow,
        trigger: JobTrigger,
        attempt: int,
        scheduled_for: float | None,
    ) -> JobRow:
        return await self._catalog.create_server_job(
            JobKind.ONLINE_BACKUP,
            {"data_source_name": ds.name, "agent_name": ds.agent_name},
            trigger,
            ds.id,
            attempt=attempt,
            scheduled_for=scheduled_for,
        )

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
        if self.gate is not None:
            self.gate.check(Operation.BACKUP_TO_CLOUD)  # refuses the whole group, as no vault
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

    async def stop_refused(self, reason: str) -> list[JobId]:
        """The cloud policy no longer allows online backups: queued jobs fail now, running
        ones stop at their next safe point; all end failed with `reason`, not retryable."""
        stopped: list[JobId] = []
        for job in await self._catalog.list_jobs(state=JobState.QUEUED, limit=10_000):
            if job.kind is JobKind.ONLINE_BACKUP and job.id not in self._running:
                await self._end(job.id, JobState.FAILED, error=reason, retryable=False)
                stopped.append(job.id)
        for job_id, entry in self._running.items():
            if entry.refused is None:
                entry.refused = reason
                entry.stop.set()
                log.warning("online_backup_stop_requested", job_id=job_id, reason=reason)
                stopped.append(job_id)
        return stopped

    async def record_refused(
        self,
        data_source_id: DataSourceId,
        error: str,
        *,
        trigger: JobTrigger,
        attempt: int = 1,
        scheduled_for: float | None = None,
    ) -> JobRow:
        """A scheduled online backup the cloud policy refused: its job, stored failed with
        `error` (never run: `_execute` starts only a job still queued)."""
        ds = await self._catalog.get_data_source(data_source_id)
        job = await self._create_job(ds, trigger, attempt, scheduled_for)
        return await self._catalog.transition_job(
            job.id, JobState.FAILED, error=error, retryable=False
        )

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
        if self.gate is not None:
            decision = self.gate.decision(Operation.BACKUP_TO_CLOUD)
            if not decision.allowed:
                await self.stop_refused(decision.reason)
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
            if self.gate is not None:
                decision = self.gate.decision(Operation.BACKUP_TO_CLOUD)
                if not decision.allowed:
                    entry.refused = decision.reason
                    await self._fail(job.id, decision.reason, retryable=False)
                    return
            started = await self._catalog.transition_job(job.id, JobState.RUNNING)
            if started.state is not JobState.RUNNING:
                return  # it ended while queued (refused, cancelled): nothing to run
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
        entry = self._running.get(job_id)
        if entry is not None and entry.refused is not None:
            # Stopped by the cloud policy: whatever broke off the job, the policy is why.
            state, error, retryable = JobState.FAILED, entry.refused, False
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
        self._budget = budget
        state = _JobProgress(bound)

        def on_retry(event: RetryEvent) -> None:
            state.on_retry(event)
            log.warning(
                "vault_retry",
                job_id=job.id,
                call=event.what,
                kind=event.error.kind,
                attempt=event.attempt + 1,  # the one about to start, as in the status
                delay=round(event.delay, 3),
                spent=round(event.spent, 1),
                budget=event.budget,
                error=str(event.error),
            )

        retrying = vault.backend if isinstance(vault.backend, Retrying) else None
        if retrying is not None:
            retrying.observer = on_retry
        writer = asyncio.create_task(self._write_progress(job.id, state))
        try:
            result = await copy_recovery_point(
                self._pool,
                pool_rp,
                vault,
                config.scratch_path,
                budget,
                parallelism=config.online.parallelism,
                pack_size=config.online.pack_mib << 20,
                progress=state.on_engine,
                stop=entry.stop,
                agent=ds.agent_id,
                now_ns=now_ns_of(self._clock),
            )
        finally:
            self._budget, self._last_high_water = None, budget.high_water
            if retrying is not None and retrying.observer is on_retry:
                retrying.observer = None
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

    async def _write_progress(self, job_id: JobId, state: _JobProgress) -> None:
        written: dict[str, Any] | None = None
        while True:
            await asyncio.sleep(PROGRESS_SECONDS)
            doc = state.doc()
            if doc is not None and doc != written:
                written = doc
                with contextlib.suppress(Exception):
                    await self._catalog.update_progress(job_id, written)

    # -- the vault -----------------------------------------------------------------------

    @property
    def scratch(self) -> ScratchGuard:
        return self._scratch

    def scratch_in_use(self) -> tuple[int, int | None]:
        """(bytes the running job holds in scratch now, its high-water mark): read-only,
        from the job's `ScratchBudget`. Idle: 0 and the high-water mark of the last job this
        process ran, None when it ran none."""
        budget = self._budget
        if budget is not None:
            return budget.in_use, budget.high_water
        return 0, self._last_high_water

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
                policy = self._retry_policy()  # a SIGHUP may have changed the budget
                if policy is not None and isinstance(self._vault.backend, Retrying):
                    self._vault.backend.policy = policy
                return self._vault
            await self._drop_vault()
            unlocked = await self._registry.unlocked()
            inner = self._opener(unlocked.registration.backend)
            policy = self._retry_policy()
            backend: VaultBackend = (
                inner if policy is None else Retrying(inner, policy, throttle=self.throttle)
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

    def _retry_policy(self) -> RetryPolicy | None:
        """The runner's own policy as given, or ONLINE_RETRY (the default) with the
        configured budget."""
        if self._retry is not ONLINE_RETRY:
            return self._retry
        budget = float(self._config().online.retry_budget_seconds)
        return replace(ONLINE_RETRY, budget=budget)

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
