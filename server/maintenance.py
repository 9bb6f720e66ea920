"""Maintenance: prune expired disk RPs, collect garbage, forget old jobs.

One `run_once` (at most one at a time; a second caller waits for the first):

1. **Prune.** The RPs server/retention.py lets go at the clock's now are deleted by one
   job (kind prune, trigger maintenance), oldest first, each catalog row first and then
   its pool record. A crash between the two leaves a pool record without a row: the
   server re-adds it from the pool at its next start and the next prune deletes it again.
   Nothing prunable: no job.
2. **GC.** When something was pruned, when ``force_gc`` is given, or when
   ``scheduler.gc_interval_hours`` have passed (on the clock) since the last successful GC
   (``server_state`` ``last_gc_at``), one job (kind gc) runs the pool's GC. GC compares
   chunk file times with real time, so it is given no clock; its safety margin is
   `gc_safety` (12 hours by default, keeping an interrupted backup's chunks for a resume).
   A server that never recorded a GC (a fresh install) records the clock's now instead of
   collecting at once: the first GC comes an interval later, not during the first minutes
   of a new server (when a stop must be quick). A task cancellation (server stop) sets the
   GC's stop event, which the engine checks between steps, and fails the job as
   retryable; the pool's executor is then free within one shard's work.
3. **Cloud GC.** With an online runner attached (`online`) and a vault registered, once a
   day on the clock (``server_state`` ``last_cloud_gc_at``; like GC, nothing recorded means
   the day starts now) or with ``force_gc``: one job
   (kind gc, params ``{"tier": "cloud"}``) applies online retention to every data source,
   purges what the 14-day grace has released and repacks mostly-garbage packs, holding
   the runner's writer lock (server/online_retention.py). Its failure opens
   `MAINTENANCE_FAILED` with subject "cloud_gc".
4. **History.** Finished jobs that ended more than ``jobs.job_history_days`` ago are
   deleted.

Both jobs only delete, so they run while the pool is under its free-space reserve. They end
succeeded (with counts and bytes in their result), succeeded_with_warnings (some RPs could
not be pruned) or failed; a failure opens the `MAINTENANCE_FAILED` alert (subject "prune"
or "gc"), which the next successful run of that kind resolves.

`run` calls `run_once` every ``scheduler.maintenance_interval_minutes`` measured on the
injected clock (checked every ``scheduler.tick_seconds`` of real time), starting at once, so
a test that moves a fake clock gets maintenance at simulated times.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import structlog

from server.catalog import Catalog, JobKind, JobRow, JobState
from server.catalog_rows import JobTrigger
from server.config import ServerConfig
from server.online_retention import run_cloud_gc
from server.retention import DiskRp, prunable
from storage_pool import RecoveryPointId, StoragePool
from storage_pool.errors import RecoveryPointNotFoundError
from storage_pool.gc import SAFETY_FULL, GcReport, SafetyParameters

if TYPE_CHECKING:
    from server.alerts import AlertCenter
    from server.online_backup import OnlineBackupRunner

__all__ = [
    "CLOUD_GC_SECONDS",
    "LAST_CLOUD_GC_KEY",
    "LAST_GC_KEY",
    "MAINTENANCE_FAILED",
    "Maintenance",
    "MaintenanceReport",
]

log = structlog.get_logger()

MAINTENANCE_FAILED: Final = "maintenance_failed"
LAST_GC_KEY: Final = "last_gc_at"
LAST_CLOUD_GC_KEY: Final = "last_cloud_gc_at"
CLOUD_GC_SECONDS: Final = 86400.0
SHUTDOWN_ERROR: Final = "the server shut down while it ran"
# Errors listed in a prune job's result; the count is always exact.
_LISTED_ERRORS: Final = 50


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    started_at: float
    pruned: tuple[RecoveryPointId, ...] = ()
    prune_errors: tuple[str, ...] = ()
    prune_job: JobRow | None = None
    gc_job: JobRow | None = None
    gc: GcReport | None = None
    jobs_deleted: int = 0
    cloud_gc_job: JobRow | None = None


class Maintenance:
    def __init__(
        self,
        catalog: Catalog,
        pool: StoragePool,
        alerts: AlertCenter | None,
        config_provider: Callable[[], ServerConfig],
        clock: Callable[[], float],
        *,
        gc_safety: SafetyParameters = SAFETY_FULL,
    ) -> None:
        self._catalog = catalog
        self._pool = pool
        self._alerts = alerts
        self._config = config_provider
        self._clock = clock
        self.gc_safety = gc_safety
        self._lock = asyncio.Lock()
        self._last_run: float | None = None
        # The online runner whose writer lock and vault cloud GC uses (set by the daemon).
        self.online: OnlineBackupRunner | None = None

    async def run(self) -> None:
        while True:
            config = self._config()
            interval = config.scheduler.maintenance_interval_minutes * 60.0
            if self._last_run is None or self._clock() - self._last_run >= interval:
                try:
                    await self.run_once()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("maintenance_failed")
            await asyncio.sleep(min(float(config.scheduler.tick_seconds), interval))

    async def run_once(self, *, force_gc: bool = False) -> MaintenanceReport:
        async with self._lock:
            config = self._config()
            now = self._clock()
            # Counted as a run even if it fails: the next try waits an interval.
            self._last_run = now
            pruned, errors, prune_job = await self._prune(now)
            gc_job: JobRow | None = None
            gc: GcReport | None = None
            # Asked every run, so a fresh install records its start even when GC runs anyway.
            due = await self._gc_due(now, config)
            if pruned or force_gc or due:
                gc_job, gc = await self._gc(now)
            cloud_gc_job = await self._cloud_gc(now, config, force=force_gc)
            cutoff = now - config.jobs.job_history_days * 86400.0
            deleted = await self._catalog.prune_jobs(cutoff)
            if deleted:
                log.info("job_history_pruned", jobs=deleted, ended_before=cutoff)
            return MaintenanceReport(
                started_at=now,
                pruned=tuple(pruned),
                prune_errors=tuple(errors),
                prune_job=prune_job,
                gc_job=gc_job,
                gc=gc,
                jobs_deleted=deleted,
                cloud_gc_job=cloud_gc_job,
            )

    # -- prune -----------------------------------------------------------------

    async def _prune(self, now: float) -> tuple[list[RecoveryPointId], list[str], JobRow | None]:
        victims = prunable(await self._catalog.retention_view(), now)
        if not victims:
            return [], [], None
        job = await self._catalog.create_server_job(
            JobKind.PRUNE,
            {"recovery_points": [rp.id for rp in victims], "as_of": now},
            JobTrigger.MAINTENANCE,
        )
        await self._catalog.transition_job(job.id, JobState.RUNNING)
        pruned: list[RecoveryPointId] = []
        errors: list[str] = []
        freed = 0
        for rp in victims:
            try:
                await self._prune_one(rp)
            except Exception as err:
                log.warning("recovery_point_prune_failed", rp_id=rp.id, error=str(err))
                errors.append(f"{rp.id}: {err}")
                continue
            pruned.append(rp.id)
            freed += rp.logical_bytes
            await self._catalog.update_progress(
                job.id, {"recovery_points": len(pruned), "recovery_points_total": len(victims)}
            )
        result: dict[str, Any] = {
            "pruned": len(pruned),
            "recovery_points": list(pruned),
            "logical_bytes": freed,
            "failed": len(errors),
            "errors": errors[:_LISTED_ERRORS],
        }
        if not errors:
            state, error = JobState.SUCCEEDED, None
        else:
            state = JobState.SUCCEEDED_WITH_WARNINGS if pruned else JobState.FAILED
            error = f"{len(errors)} of {len(victims)} recovery points not pruned: {errors[0]}"
        job = await self._catalog.transition_job(
            job.id, state, error=error, result=result, warnings=len(errors)
        )
        log.info("prune_finished", job_id=job.id, pruned=len(pruned), failed=len(errors))
        await self._report("prune", job)
        return pruned, errors, job

    async def _prune_one(self, rp: DiskRp) -> None:
        # Row first: an RP the catalog does not list is never handed out for a restore,
        # and a record left in the pool by a crash comes back at the next start.
        await self._catalog.remove_recovery_point(rp.id)
        # Already gone from the pool (deleted by hand, or the pool was restored): done.
        with contextlib.suppress(RecoveryPointNotFoundError):
            await self._pool.delete_recovery_point(rp.id)
        log.info(
            "recovery_point_pruned",
            rp_id=rp.id,
            data_source=rp.data_source_id,
            created_at=rp.created_at,
        )

    # -- gc --------------------------------------------------------------------

    async def _gc_due(self, now: float, config: ServerConfig) -> bool:
        last = await self._catalog.get_server_state(LAST_GC_KEY)
        if last is None:
            # A fresh install has nothing to collect yet: its first GC is an interval away.
            await self._catalog.set_server_state(LAST_GC_KEY, repr(now))
            log.info("gc_first_scheduled", recorded_at=now)
            return False
        try:
            return now - float(last) >= config.scheduler.gc_interval_hours * 3600.0
        except ValueError:
            return True

    async def _gc(self, now: float) -> tuple[JobRow, GcReport | None]:
        job = await self._catalog.create_server_job(
            JobKind.GC,
            {"min_chunk_age_seconds": self.gc_safety.min_chunk_age.total_seconds()},
            JobTrigger.MAINTENANCE,
        )
        await self._catalog.transition_job(job.id, JobState.RUNNING)
        stop = threading.Event()
        try:
            report = await self._pool.gc(self.gc_safety, stop=stop)
        except asyncio.CancelledError:
            # The thread cannot be interrupted; the event ends it at its next step.
            stop.set()
            log.warning("gc_stopped", job_id=job.id)
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._catalog.transition_job(
                        job.id, JobState.FAILED, error=SHUTDOWN_ERROR, retryable=True
                    )
                )
            raise
        except Exception as err:
            log.warning("gc_failed", job_id=job.id, error=str(err))
            job = await self._catalog.transition_job(
                job.id, JobState.FAILED, error=f"garbage collection failed: {err}"
            )
            await self._report("gc", job)
            return job, None
        result = {
            "recovery_points": report.recovery_points,
            "marked_chunks": report.marked_chunks,
            "scanned_chunks": report.scanned_chunks,
            "swept_chunks": report.swept_chunks,
            "bytes_reclaimed": report.swept_bytes,
            "kept_young": report.kept_young,
            "kept_by_sessions": report.kept_by_sessions,
            "foreign_entries": len(report.foreign_entries),
            "duration_s": round(report.duration_s, 3),
        }
        job = await self._catalog.transition_job(job.id, JobState.SUCCEEDED, result=result)
        await self._catalog.set_server_state(LAST_GC_KEY, repr(now))
        log.info(
            "gc_finished",
            job_id=job.id,
            swept_chunks=report.swept_chunks,
            bytes_reclaimed=report.swept_bytes,
        )
        await self._report("gc", job)
        return job, report

    # -- cloud gc --------------------------------------------------------------

    async def _cloud_gc(self, now: float, config: ServerConfig, *, force: bool) -> JobRow | None:
        if self.online is None:
            return None
        if not force:
            last = await self._catalog.get_server_state(LAST_CLOUD_GC_KEY)
            if last is None:
                # Never recorded (a fresh install or a first vault): a day from now.
                await self._catalog.set_server_state(LAST_CLOUD_GC_KEY, repr(now))
                return None
            with contextlib.suppress(ValueError):
                if last is not None and now - float(last) < CLOUD_GC_SECONDS:
                    return None
        job = await run_cloud_gc(self._catalog, self.online, config, self._clock)
        if job is None:
            return None
        if job.state is JobState.SUCCEEDED:
            await self._catalog.set_server_state(LAST_CLOUD_GC_KEY, repr(now))
        await self._report("cloud_gc", job)
        return job

    async def _report(self, what: str, job: JobRow) -> None:
        if self._alerts is None:
            return
        if job.state is JobState.FAILED:
            await self._alerts.open(
                MAINTENANCE_FAILED,
                what,
                f"{what} job {job.id} failed: {job.error or 'no reason given'}",
                details={"job_id": job.id, "error": job.error},
            )
        else:
            await self._alerts.resolve(MAINTENANCE_FAILED, what)
