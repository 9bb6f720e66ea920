"""The scheduler: protection-group slots become backup jobs; transient failures retry.

Every `tick` (``scheduler.tick_seconds`` of real time in `run`; a test calls it directly
after moving a fake clock) does three things, in this order, for every data source of a
live protection group:

1. **Slots.** The due slots are the policy's slots in ``(max(last_slot, protected_at),
   now]`` (server/policy.py `slots_between`); `last_slot` is the last slot served, kept in
   the catalog, so a restart neither repeats nor forgets one, and a data source that joins
   at 10:07 is first due at the next slot. No due slot: nothing. One due slot no older than
   ``scheduler.missed_grace_seconds``: one backup job, trigger ``schedule``. More than one,
   or one older than the grace (the server was down or stalled): still ONE job, trigger
   ``missed``, for the newest slot, and a `MISSED_BACKUP` alert naming the slots that did
   not run. The newest due slot is then recorded as served whatever happened: a backup of
   the data source already queued or running serves it (no second job is queued), and a
   job refused because the pool is under its free-space reserve, or by the cloud policy
   (server/cloud_gate.py: the connectivity and vault state in its message), is stored as
   failed with that message (`Catalog.record_refused_job`), not retryable.
2. **Retries.** When a data source's newest backup job has trigger schedule, missed or
   retry, ended ``failed`` with ``retryable`` set (a transient failure: the agent stayed
   offline past its wait, restarted, or reported a lost connection), and has made fewer
   than ``jobs.retry_attempts`` attempts, a new job (trigger ``retry``, ``attempt + 1``,
   the same ``scheduled_for``) is created once ``jobs.retry_backoff_seconds * 2 **
   (attempt - 1)`` has passed since it ended, unless the slot after the one it serves has
   come (the schedule takes over). A permanent failure is not retried; its reason stays
   in the job's error.
3. **RPO.** A data source with no RP for longer than its policy's longest gap between
   slots plus ``alerts.rpo_grace_minutes`` (counted from `protected_at` while it has none)
   opens `MISSED_BACKUP`. The alert resolves once the newest RP is fresh again and at least
   as new as the last served slot, so a catch-up job's alert stays open until that job
   has produced its RP.

`tick` holds a lock: a test may call it while `run` runs, and two ticks never create a job
for the same slot. Each tick reads the config anew (SIGHUP applies), and one data source's
error is logged without stopping the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Final
from zoneinfo import ZoneInfo

import structlog

from server.alerts import MISSED_BACKUP
from server.capacity import InsufficientStorageError
from server.catalog import Catalog, ConflictError, InvalidStateError, JobKind, JobRow, JobState
from server.catalog_groups import ProtectedSource
from server.catalog_rows import JobTrigger
from server.cloud_status import CloudPolicyRefused
from server.config import JobsSettings, ServerConfig
from server.ids import DataSourceId
from server.loops import repeat
from server.policy import (
    DiskPolicy,
    max_slot_gap_seconds,
    next_slot,
    resolve_timezone,
    slots_between,
)

if TYPE_CHECKING:
    from server.alerts import AlertCenter
    from server.jobs import JobManager

__all__ = ["RETRIED_TRIGGERS", "Scheduler", "retry_due_at", "should_retry"]

log = structlog.get_logger()

RETRIED_TRIGGERS: Final = frozenset({JobTrigger.SCHEDULE, JobTrigger.MISSED, JobTrigger.RETRY})
# The alert names at most this many missed slots; the count is always exact.
_LISTED_SLOTS: Final = 24


def retry_due_at(job: JobRow, backoff_seconds: float) -> float | None:
    """When the retry of the failed `job` is due (None: the job has not ended)."""
    if job.ended_at is None:
        return None
    return job.ended_at + backoff_seconds * float(2 ** (job.attempt - 1))


def should_retry(
    job: JobRow, disk: DiskPolicy, tz: ZoneInfo, now: float, settings: JobsSettings
) -> bool:
    """Whether the failed `job`, the newest backup of its data source, is retried at `now`
    (the rule of the module docstring, step 2)."""
    if job.state is not JobState.FAILED or not job.retryable:
        return False
    if job.trigger not in RETRIED_TRIGGERS or job.attempt >= settings.retry_attempts:
        return False
    due = retry_due_at(job, settings.retry_backoff_seconds)
    if due is None or now < due:
        return False
    slot = job.scheduled_for if job.scheduled_for is not None else job.created_at
    return next_slot(disk, tz, slot) > now


def _local(ts: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M %Z")


class Scheduler:
    def __init__(
        self,
        catalog: Catalog,
        jobs: JobManager,
        alerts: AlertCenter | None,
        config_provider: Callable[[], ServerConfig],
        clock: Callable[[], float],
    ) -> None:
        self._catalog = catalog
        self._jobs = jobs
        self._alerts = alerts
        self._config = config_provider
        self._clock = clock
        self._lock = asyncio.Lock()
        # Data sources whose MISSED_BACKUP alert this process may have opened. The first
        # RPO check resolves every fresh data source: a previous process may have left one.
        self._alerted: set[DataSourceId] = set()
        self._swept = False

    async def run(self) -> None:
        await repeat(
            self.tick,
            failed_event="scheduler_tick_failed",
            interval=lambda: self._config().scheduler.tick_seconds,
        )

    async def tick(self) -> list[JobRow]:
        """Create the jobs due now; returns them (a job refused for the pool's reserve is
        among them, already failed)."""
        async with self._lock:
            config = self._config()
            tz = resolve_timezone(config.scheduler.timezone)
            now = self._clock()
            sources = await self._catalog.protected_sources()
            created: list[JobRow] = []
            for src in sources:
                try:
                    job = await self._serve_slots(src, tz, now, config)
                except Exception:
                    log.exception("schedule_failed", data_source=src.data_source.id)
                    continue
                if job is not None:
                    created.append(job)
            created.extend(await self._retries(sources, tz, now, config))
            # Fresh rows: a job of this tick may not change them, but an RP committed
            # meanwhile does, and the RPO check should see it.
            await self._check_rpo(await self._catalog.protected_sources(), now, config)
            return created

    # -- slots -----------------------------------------------------------------

    async def _serve_slots(
        self, src: ProtectedSource, tz: ZoneInfo, now: float, config: ServerConfig
    ) -> JobRow | None:
        ds = src.data_source
        start = src.protected_at if src.last_slot is None else max(src.last_slot, src.protected_at)
        due = slots_between(src.disk, tz, start, now)
        if not due:
            return None
        newest = due[-1]
        late = now - newest > config.scheduler.missed_grace_seconds
        on_time = len(due) == 1 and not late
        trigger = JobTrigger.SCHEDULE if on_time else JobTrigger.MISSED
        job = await self._start(src, trigger, 1, newest)
        await self._catalog.record_schedule_slot(ds.id, newest, None if job is None else job.id)
        log.info(
            "schedule_slot_served",
            data_source=ds.id,
            slot=newest,
            trigger=trigger.value,
            job_id=None if job is None else job.id,
            due_slots=len(due),
        )
        if not on_time:
            await self._alert_missed(src, tz, due if late else due[:-1], job)
        return job

    async def _start(
        self,
        src: ProtectedSource,
        trigger: JobTrigger,
        attempt: int,
        scheduled_for: float | None,
    ) -> JobRow | None:
        ds = src.data_source
        active = await self._catalog.active_backup_for(ds.id)
        if active is not None:
            # It serves the slot: a second backup would only queue behind it.
            log.info(
                "scheduled_backup_already_active",
                data_source=ds.id,
                job_id=active.id,
                trigger=trigger.value,
            )
            return None
        try:
            job: JobRow = await self._jobs.start_backup(
                ds.id, trigger=trigger, attempt=attempt, scheduled_for=scheduled_for
            )
        except (InsufficientStorageError, CloudPolicyRefused) as err:
            log.warning("scheduled_backup_refused", data_source=ds.id, error=str(err))
            return await self._catalog.record_refused_job(
                JobKind.BACKUP,
                ds.agent_id,
                ds.id,
                {
                    "paths": list(ds.paths),
                    "excludes": list(ds.excludes),
                    "data_source_name": ds.name,
                },
                str(err),
                trigger=trigger,
                attempt=attempt,
                scheduled_for=scheduled_for,
            )
        except (ConflictError, InvalidStateError) as err:
            active = await self._catalog.active_backup_for(ds.id)
            if active is not None:
                log.info(
                    "scheduled_backup_already_active",
                    data_source=ds.id,
                    job_id=active.id,
                    trigger=trigger.value,
                )
            else:
                log.warning("scheduled_backup_not_started", data_source=ds.id, error=str(err))
            return None
        return job

    async def _alert_missed(
        self,
        src: ProtectedSource,
        tz: ZoneInfo,
        missed: Sequence[float],
        job: JobRow | None,
    ) -> None:
        ds = src.data_source
        listed = [_local(s, tz) for s in missed[-_LISTED_SLOTS:]]
        span = listed[0] if len(missed) == 1 else f"{_local(missed[0], tz)} to {listed[-1]}"
        catch_up = (
            f"one catch-up backup (job {job.id}) was started"
            if job is not None and job.state is JobState.QUEUED
            else "no catch-up backup could be started"
            if job is None or job.state is JobState.FAILED
            else f"catch-up job {job.id}"
        )
        message = (
            f"{len(missed)} scheduled backup(s) of data source {ds.ref} (protection group"
            f" {src.group_name}) did not run at their time ({span}); {catch_up}"
        )
        log.warning("backups_missed", data_source=ds.id, missed=len(missed))
        if self._alerts is None:
            return
        await self._alerts.open(
            MISSED_BACKUP,
            ds.id,
            message,
            details={
                "data_source_id": ds.id,
                "protection_group_id": src.group_id,
                "missed_count": len(missed),
                "missed_slots": list(missed[-_LISTED_SLOTS:]),
                "job_id": None if job is None else job.id,
            },
        )
        self._alerted.add(ds.id)

    # -- retries ---------------------------------------------------------------

    async def _retries(
        self, sources: Sequence[ProtectedSource], tz: ZoneInfo, now: float, config: ServerConfig
    ) -> list[JobRow]:
        latest = await self._catalog.latest_backup_jobs()
        created: list[JobRow] = []
        for src in sources:
            job = latest.get(src.data_source.id)
            if job is None or not should_retry(job, src.disk, tz, now, config.jobs):
                continue
            try:
                new = await self._start(src, JobTrigger.RETRY, job.attempt + 1, job.scheduled_for)
            except Exception:
                log.exception("retry_failed", data_source=src.data_source.id, job_id=job.id)
                continue
            if new is not None:
                log.info(
                    "backup_retried",
                    data_source=src.data_source.id,
                    failed_job=job.id,
                    job_id=new.id,
                    attempt=new.attempt,
                )
                created.append(new)
        return created

    # -- RPO -------------------------------------------------------------------

    async def _check_rpo(
        self, sources: Sequence[ProtectedSource], now: float, config: ServerConfig
    ) -> None:
        if self._alerts is None:
            return
        first, self._swept = not self._swept, True
        alerted = self._alerted
        grace = config.alerts.rpo_grace_minutes * 60.0
        seen: set[DataSourceId] = set()
        for src in sources:
            ds = src.data_source
            seen.add(ds.id)
            limit = max_slot_gap_seconds(src.disk) + grace
            since = src.last_rp_at if src.last_rp_at is not None else src.protected_at
            if now - since > limit:
                if ds.id not in alerted:
                    hours = (now - since) / 3600
                    what = (
                        "no recovery point yet" if src.last_rp_at is None else "no recovery point"
                    )
                    await self._alerts.open(
                        MISSED_BACKUP,
                        ds.id,
                        f"data source {ds.ref} (protection group {src.group_name}) has {what}"
                        f" for {hours:.1f} h; its policy promises one every"
                        f" {max_slot_gap_seconds(src.disk) / 60:.0f} min"
                        f" (+{config.alerts.rpo_grace_minutes} min grace)",
                        details={
                            "data_source_id": ds.id,
                            "protection_group_id": src.group_id,
                            "last_rp_at": src.last_rp_at,
                        },
                    )
                    alerted.add(ds.id)
                continue
            fresh = src.last_rp_at is not None and (
                src.last_slot is None or src.last_rp_at >= src.last_slot
            )
            if fresh and (first or ds.id in alerted):
                await self._alerts.resolve(MISSED_BACKUP, ds.id)
                alerted.discard(ds.id)
        # A data source that left its group (or was removed) has no schedule to miss.
        for ds_id in sorted(alerted - seen):
            await self._alerts.resolve(MISSED_BACKUP, ds_id)
            alerted.discard(ds_id)
