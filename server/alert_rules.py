"""The periodic alert rules: each evaluation opens what is wrong and resolves what cleared.

Every `EVALUATE_SECONDS` (real time) `AlertRules.evaluate_once` looks at the catalog and
the pool and makes the open alerts match:

* `FAILED_JOB`, subject a data source id: the data source's latest backup that succeeded
  or failed (cancelled ones say nothing) failed. A later successful backup resolves it, as
  does removing the data source.
* `FAILED_JOB`, subject a restore's job id: the restore failed. It resolves when a later
  restore of the same recovery point succeeds, or when the failed job leaves the job
  history (``jobs.job_history_days``): a restore is a one-off request, so there is no
  later run of "the same" restore to clear it otherwise.
* `AGENT_OFFLINE`, subject an agent id: the agent has been offline for longer than
  ``alerts.agent_offline_minutes``, counted from its last state change (or its creation,
  if it never connected). It resolves when the agent comes back or is removed. Agents
  rebuilt from the pool that must register again are left out: they cannot connect.
* `POOL_USAGE`, subject the pool path: used space at or above
  ``alerts.pool_warning_percent`` (severity warning) or ``alerts.pool_critical_percent``
  (critical).
* `POOL_RESERVE`, subject the pool path: free space under the reserve (server/capacity.py;
  backups also open and resolve it when they are refused or allowed).

`MISSED_BACKUP` is the scheduler's: it knows the schedules (server/scheduler.py).

Times compare with the injected clock, the one the catalog stamps rows with.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog

from server.alerts import (
    AGENT_OFFLINE,
    FAILED_JOB,
    POOL_USAGE,
    AlertCenter,
)
from server.capacity import pool_capacity, report_capacity
from server.catalog import Catalog, JobState
from server.catalog_rows import AlertRow, AlertSeverity
from server.config import ServerConfig
from server.loops import repeat

__all__ = ["EVALUATE_SECONDS", "AlertRules"]

log = structlog.get_logger()

EVALUATE_SECONDS: Final = 30.0
RESTORES_CONSIDERED: Final = 1000


def _utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


class AlertRules:
    def __init__(
        self,
        catalog: Catalog,
        alerts: AlertCenter,
        pool_path: Path,
        settings: Callable[[], ServerConfig],
        clock: Callable[[], float],
        *,
        interval_seconds: float = EVALUATE_SECONDS,
    ) -> None:
        self.catalog = catalog
        self.alerts = alerts
        self.pool_path = pool_path
        # A callable, so the thresholds a SIGHUP reloads apply at the next evaluation.
        self.settings = settings
        self.clock = clock
        self.interval_seconds = interval_seconds

    async def run(self) -> None:
        await repeat(
            self.evaluate_once,
            failed_event="alert_rules_failed",
            interval=lambda: self.interval_seconds,
        )

    async def evaluate_once(self) -> None:
        await self.failed_jobs()
        await self.offline_agents()
        await self.pool_space()

    async def _open_by_subject(self, kind: str) -> dict[str, AlertRow]:
        return {a.subject: a for a in await self.catalog.open_alerts_of_kind(kind)}

    async def failed_jobs(self) -> None:
        current = await self._open_by_subject(FAILED_JOB)
        failing: dict[str, tuple[str, dict[str, object]]] = {}
        sources = {d.id: d for d in await self.catalog.list_data_sources()}
        for ds_id, job in (await self.catalog.latest_backup_outcomes()).items():
            if job.state is not JobState.FAILED:
                continue
            ds = sources.get(ds_id)
            ref = ds.ref if ds is not None else ds_id
            failing[ds_id] = (
                f"the last backup of {ref} failed (job {job.id}): {job.error or 'no reason given'}",
                {"job_id": job.id, "data_source_id": ds_id, "error": job.error},
            )
        restored_ok: set[str] = set()
        for job in await self.catalog.restore_outcomes(RESTORES_CONSIDERED):  # newest first
            rp_id = str(job.params.get("rp_id"))
            if job.state is not JobState.FAILED:
                restored_ok.add(rp_id)
            elif rp_id not in restored_ok:
                failing[job.id] = (
                    f"restore job {job.id} of recovery point {rp_id} failed:"
                    f" {job.error or 'no reason given'}",
                    {"job_id": job.id, "rp_id": rp_id, "error": job.error},
                )
        for subject, (message, details) in failing.items():
            known = current.get(subject)
            if known is None or known.details.get("job_id") != details["job_id"]:
                await self.alerts.open(FAILED_JOB, subject, message, details=details)
        for subject in current.keys() - failing.keys():
            await self.alerts.resolve(FAILED_JOB, subject)

    async def offline_agents(self) -> None:
        current = await self._open_by_subject(AGENT_OFFLINE)
        limit = self.settings().alerts.agent_offline_minutes * 60.0
        now = self.clock()
        offline: set[str] = set()
        for agent in await self.catalog.list_agents():
            if agent.online or agent.needs_registration:
                continue
            since = agent.state_changed_at or agent.created_at
            if now - since <= limit:
                continue
            offline.add(agent.id)
            if agent.id not in current:
                await self.alerts.open(
                    AGENT_OFFLINE,
                    agent.id,
                    f"agent {agent.name} has been offline since {_utc(since)}"
                    f" (alert after {int(limit // 60)} min)",
                    details={"agent_name": agent.name, "offline_since": since},
                )
        for subject in current.keys() - offline:
            await self.alerts.resolve(AGENT_OFFLINE, subject)

    async def pool_space(self) -> None:
        config = self.settings()
        c = await pool_capacity(self.pool_path, config.pool)
        await report_capacity(c, self.alerts)
        subject = str(self.pool_path)
        used = c.used_percent
        if used >= config.alerts.pool_critical_percent:
            severity, limit = AlertSeverity.CRITICAL, config.alerts.pool_critical_percent
        elif used >= config.alerts.pool_warning_percent:
            severity, limit = AlertSeverity.WARNING, config.alerts.pool_warning_percent
        else:
            await self.alerts.resolve(POOL_USAGE, subject)
            return
        known = (await self._open_by_subject(POOL_USAGE)).get(subject)
        if (
            known is not None
            and known.severity is severity
            and known.details.get("used_percent") == int(used)
        ):
            return
        await self.alerts.open(
            POOL_USAGE,
            subject,
            f"storage pool {subject} is {int(used)}% full (alert at {limit}%)",
            severity=severity,
            details={
                "used_percent": int(used),
                "free_bytes": c.free_bytes,
                "total_bytes": c.total_bytes,
            },
        )
