"""The online schedule: a protection group's online times become online backup jobs.

Every `tick` (``scheduler.tick_seconds`` of real time in `run`; tests call it after moving
a fake clock), for every data source of a live group with online protection enabled:

1. **Slots.** Each of the group's online times (``HH:MM``, up to 3 a day, in
   ``scheduler.timezone``) is a slot every day. The due slots are those in
   ``(max(last_online_slot, protected_at), now]`` (`online_slots` in the catalog keeps the
   last one served, so a restart neither repeats nor forgets one). One due slot no older
   than ``scheduler.missed_grace_seconds``: one online job, trigger ``schedule``. More, or
   an older one (the server was down): still ONE job, trigger ``missed``, for the newest.
   The newest due slot is recorded as served whatever happened: an online job of the data
   source already queued or running serves it. A slot that cannot start a job (no vault
   registered, no disk RP yet) opens the `ONLINE_BACKUP_NOT_STARTED` alert for the data
   source with the reason; the next job that starts resolves it. A slot the cloud policy
   refuses (server/cloud_gate.py) also leaves its job, stored failed with the policy's
   reason (connectivity and vault state), not retryable.
2. **Retries.** The newest online job of a data source, with trigger schedule, missed or
   retry, that failed as retryable (a cloud outage past the retry budget, a server stop)
   is tried again like a disk backup (server/scheduler.py `retry_due_at`, up to
   ``jobs.retry_attempts``), unless its next online slot has come.
3. **Scratch.** The scratch bound is checked against the scratch filesystem
   (server/scratch_bound.py): a policy change that grows the protected data shows here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Final
from zoneinfo import ZoneInfo

import structlog

from server.catalog import Catalog, JobKind, JobRow, JobState
from server.catalog_errors import ConflictError, InvalidStateError
from server.catalog_groups import ProtectedSource
from server.catalog_rows import JobTrigger
from server.cloud_status import CloudPolicyRefused
from server.config import ServerConfig
from server.ids import DataSourceId
from server.loops import repeat
from server.online_backup import OnlineBackupRunner
from server.policy import OnlinePolicy, resolve_timezone
from server.scheduler import RETRIED_TRIGGERS, retry_due_at

if TYPE_CHECKING:
    from server.alerts import AlertCenter
    from server.scratch_bound import ScratchGuard

__all__ = [
    "ONLINE_BACKUP_NOT_STARTED",
    "OnlineScheduler",
    "next_online_slot",
    "online_slots_between",
]

log = structlog.get_logger()

ONLINE_BACKUP_NOT_STARTED: Final = "online_backup_not_started"


def _minutes(times: Sequence[str]) -> list[int]:
    out = []
    for t in times:
        hh, _, mm = t.partition(":")
        out.append(int(hh) * 60 + int(mm))
    return sorted(set(out))


def _day_slots(policy: OnlinePolicy, tz: ZoneInfo, day: date) -> list[float]:
    slots = {
        datetime.combine(day, time(m // 60, m % 60), tzinfo=tz).timestamp()
        for m in _minutes(policy.times)
    }
    return sorted(slots)


def online_slots_between(
    policy: OnlinePolicy, tz: ZoneInfo, after: float, until: float
) -> list[float]:
    """Online slot times in ``(after, until]``, sorted."""
    if until <= after or not policy.times:
        return []
    day = datetime.fromtimestamp(after, tz).date() - timedelta(days=1)
    last = datetime.fromtimestamp(until, tz).date() + timedelta(days=1)
    out: list[float] = []
    while day <= last:
        out.extend(s for s in _day_slots(policy, tz, day) if after < s <= until)
        day += timedelta(days=1)
    return sorted(set(out))


def next_online_slot(policy: OnlinePolicy, tz: ZoneInfo, after: float) -> float:
    """The first online slot strictly after `after`."""
    day = datetime.fromtimestamp(after, tz).date()
    for ahead in range(3):
        slots = [s for s in _day_slots(policy, tz, day + timedelta(days=ahead)) if s > after]
        if slots:
            return slots[0]
    raise ValueError("an online policy without times has no slots")


class OnlineScheduler:
    def __init__(
        self,
        catalog: Catalog,
        runner: OnlineBackupRunner,
        alerts: AlertCenter | None,
        config_provider: Callable[[], ServerConfig],
        clock: Callable[[], float],
        *,
        scratch: ScratchGuard | None = None,
    ) -> None:
        self._catalog = catalog
        self._runner = runner
        self._alerts = alerts
        self._config = config_provider
        self._clock = clock
        self._scratch = scratch
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        await repeat(
            self.tick,
            failed_event="online_scheduler_tick_failed",
            interval=lambda: self._config().scheduler.tick_seconds,
        )

    async def tick(self) -> list[JobRow]:
        """Create the online jobs due now; returns them."""
        async with self._lock:
            config = self._config()
            tz = resolve_timezone(config.scheduler.timezone)
            now = self._clock()
            sources = [s for s in await self._catalog.protected_sources() if s.online.enabled]
            served = await self._catalog.online_slots()
            created: list[JobRow] = []
            for src in sources:
                try:
                    job = await self._serve(src, served.get(src.data_source.id), tz, now, config)
                except Exception:
                    log.exception("online_schedule_failed", data_source=src.data_source.id)
                    continue
                if job is not None:
                    created.append(job)
            created.extend(await self._retries(sources, tz, now, config))
            if self._scratch is not None:
                try:
                    await self._scratch.check()
                except Exception:
                    log.exception("scratch_check_failed")
            return created

    async def _serve(
        self,
        src: ProtectedSource,
        last: float | None,
        tz: ZoneInfo,
        now: float,
        config: ServerConfig,
    ) -> JobRow | None:
        ds = src.data_source
        start = src.protected_at if last is None else max(last, src.protected_at)
        due = online_slots_between(src.online, tz, start, now)
        if not due:
            return None
        newest = due[-1]
        late = now - newest > config.scheduler.missed_grace_seconds
        trigger = JobTrigger.SCHEDULE if len(due) == 1 and not late else JobTrigger.MISSED
        job = await self._start(ds.id, trigger, 1, newest)
        await self._catalog.record_online_slot(ds.id, newest)
        log.info(
            "online_slot_served",
            data_source=ds.id,
            slot=newest,
            trigger=trigger.value,
            due_slots=len(due),
            job_id=None if job is None else job.id,
        )
        return job

    async def _start(
        self, ds_id: DataSourceId, trigger: JobTrigger, attempt: int, slot: float | None
    ) -> JobRow | None:
        active = await self._runner.active_for(ds_id)
        if active is not None:
            log.info("online_backup_already_active", data_source=ds_id, job_id=active.id)
            return None
        try:
            job = await self._runner.start(
                ds_id, trigger=trigger, attempt=attempt, scheduled_for=slot
            )
        except ConflictError:
            return None
        except CloudPolicyRefused as err:
            log.warning("online_backup_refused", data_source=ds_id, error=str(err))
            job = await self._runner.record_refused(
                ds_id, str(err), trigger=trigger, attempt=attempt, scheduled_for=slot
            )
            await self._alert_not_started(ds_id, str(err), slot)
            return job
        except InvalidStateError as err:
            log.warning("online_backup_not_started", data_source=ds_id, error=str(err))
            await self._alert_not_started(ds_id, str(err), slot)
            return None
        if self._alerts is not None:
            await self._alerts.resolve(ONLINE_BACKUP_NOT_STARTED, ds_id)
        return job

    async def _alert_not_started(self, ds_id: DataSourceId, why: str, slot: float | None) -> None:
        if self._alerts is not None:
            await self._alerts.open(
                ONLINE_BACKUP_NOT_STARTED,
                ds_id,
                f"the scheduled online backup of data source {ds_id} did not start: {why}",
                details={"data_source_id": ds_id, "slot": slot},
            )

    async def _retries(
        self,
        sources: Sequence[ProtectedSource],
        tz: ZoneInfo,
        now: float,
        config: ServerConfig,
    ) -> list[JobRow]:
        created: list[JobRow] = []
        for src in sources:
            ds_id = src.data_source.id
            jobs = [
                j
                for j in await self._catalog.list_jobs(data_source_id=ds_id, limit=50)
                if j.kind is JobKind.ONLINE_BACKUP
            ]
            if not jobs:
                continue
            job = jobs[0]  # newest first
            if job.state is not JobState.FAILED or not job.retryable:
                continue
            if job.trigger not in RETRIED_TRIGGERS or job.attempt >= config.jobs.retry_attempts:
                continue
            due = retry_due_at(job, config.jobs.retry_backoff_seconds)
            if due is None or now < due:
                continue
            slot = job.scheduled_for if job.scheduled_for is not None else job.created_at
            if next_online_slot(src.online, tz, slot) <= now:
                continue  # the schedule takes over
            new = await self._start(ds_id, JobTrigger.RETRY, job.attempt + 1, job.scheduled_for)
            if new is not None:
                log.info("online_backup_retried", data_source=ds_id, failed_job=job.id)
                created.append(new)
        return created
