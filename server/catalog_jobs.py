"""Catalog table `jobs`: backups and restores, their state machine and progress.

States: queued -> running | cancelled | failed; running -> succeeded |
succeeded_with_warnings | failed | cancelled. A final state is final.

Idempotence: agents report over MQTT with QoS 1, which delivers at least once, so every
report may arrive twice. `transition_job` on a job already in a final state, or a second
"running", returns the stored row unchanged (the first result wins); `update_progress` on a
job that is not running does nothing and returns False. Only a move the state machine
forbids (queued -> succeeded) raises InvalidStateError.

At most one backup per data source is queued or running (a partial unique index); a second
`create_job` for it raises ConflictError naming the active job. At server start,
`fail_unfinished_jobs` fails what a crash left queued or running.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

import structlog

from server.catalog_base import CatalogBase, Tx
from server.catalog_errors import ConflictError, InvalidStateError, NotFoundError
from server.catalog_rows import (
    FINAL_STATES,
    JOB_COLUMNS,
    NEXT_STATES,
    SERVER_JOB_KINDS,
    JobKind,
    JobRow,
    JobState,
    JobTrigger,
    job_from_row,
    to_json,
)
from server.ids import AgentId, DataSourceId, JobId, new_job_id

__all__ = ["JobTables"]

log = structlog.get_logger()

_ACTIVE_SQL = "('queued', 'running')"
_FINAL_SQL = "(" + ", ".join(f"'{s.value}'" for s in sorted(FINAL_STATES)) + ")"


async def _job(tx: Tx, job_id: str) -> JobRow:
    row = await tx.one(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
    if row is None:
        raise NotFoundError("job", job_id)
    return job_from_row(row)


async def _active_backup(tx: Tx, ds_id: str) -> JobRow | None:
    row = await tx.one(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE data_source_id = ? AND kind = 'backup'"
        f" AND state IN {_ACTIVE_SQL}",
        (ds_id,),
    )
    return None if row is None else job_from_row(row)


class JobTables(CatalogBase):
    async def create_job(
        self,
        kind: JobKind,
        agent_id: AgentId,
        data_source_id: DataSourceId | None,
        params: Mapping[str, Any],
        *,
        trigger: JobTrigger = JobTrigger.MANUAL,
        attempt: int = 1,
        scheduled_for: float | None = None,
    ) -> JobRow:
        """A queued job. A backup needs a data source of that agent that is not removed and
        has no other backup queued or running (ConflictError); a restore's data source, if
        any, is where the data came from and may belong to another agent."""
        kind = JobKind(kind)
        params_json = to_json(params, "job params")
        job_id = new_job_id()
        async with self._write() as tx:
            agent = await tx.one(
                "SELECT removed_at, credential_hash FROM agents WHERE id = ?", (agent_id,)
            )
            if agent is None:
                raise NotFoundError("agent", agent_id)
            if agent["removed_at"] is not None or agent["credential_hash"] is None:
                why = "removed" if agent["removed_at"] is not None else "not registered"
                raise InvalidStateError("agent", agent_id, f"agent {agent_id} is {why}")
            if kind is JobKind.BACKUP:
                await self._check_backup_source(tx, agent_id, data_source_id)
            elif data_source_id is not None and not await tx.one(
                "SELECT 1 FROM data_sources WHERE id = ?", (data_source_id,)
            ):
                raise NotFoundError("data source", data_source_id)
            try:
                await tx.run(
                    f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES"
                    " (?, ?, 'queued', ?, ?, ?, '{}', NULL, NULL, 0, ?, NULL, NULL, ?, ?, ?, ?, 0)",
                    (
                        job_id,
                        kind.value,
                        agent_id,
                        data_source_id,
                        params_json,
                        tx.now,
                        tx.now,
                        JobTrigger(trigger).value,
                        attempt,
                        scheduled_for,
                    ),
                )
            except sqlite3.IntegrityError as err:
                # Another process won the race between the check above and this insert.
                raise ConflictError(
                    "data source", str(data_source_id), f"a backup of {data_source_id} is active"
                ) from err
            job = await _job(tx, job_id)
        log.info("job_created", job_id=job_id, kind=kind.value, agent_id=agent_id)
        return job

    async def create_server_job(
        self,
        kind: JobKind,
        params: Mapping[str, Any],
        trigger: JobTrigger = JobTrigger.MAINTENANCE,
        data_source_id: DataSourceId | None = None,
        *,
        attempt: int = 1,
        scheduled_for: float | None = None,
    ) -> JobRow:
        """A queued job the server runs itself (prune, gc, verify, online backup): no
        agent; a data source for an online backup. The caller moves it through its states
        with `transition_job`."""
        kind = JobKind(kind)
        if kind not in SERVER_JOB_KINDS:
            raise InvalidStateError("job", kind.value, f"{kind.value} jobs run on an agent")
        params_json = to_json(params, "job params")
        job_id = new_job_id()
        async with self._write() as tx:
            if data_source_id is not None and not await tx.one(
                "SELECT 1 FROM data_sources WHERE id = ?", (data_source_id,)
            ):
                raise NotFoundError("data source", data_source_id)
            await tx.run(
                f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES"
                " (?, ?, 'queued', NULL, ?, ?, '{}', NULL, NULL, 0, ?, NULL, NULL, ?, ?, ?,"
                " ?, 0)",
                (
                    job_id,
                    kind.value,
                    data_source_id,
                    params_json,
                    tx.now,
                    tx.now,
                    JobTrigger(trigger).value,
                    attempt,
                    scheduled_for,
                ),
            )
            job = await _job(tx, job_id)
        log.info("job_created", job_id=job_id, kind=kind.value, trigger=JobTrigger(trigger).value)
        return job

    async def record_refused_job(
        self,
        kind: JobKind,
        agent_id: AgentId,
        data_source_id: DataSourceId | None,
        params: Mapping[str, Any],
        error: str,
        *,
        trigger: JobTrigger,
        attempt: int = 1,
        scheduled_for: float | None = None,
    ) -> JobRow:
        """A job that failed before it could start (the pool is under its reserve): stored
        directly as failed, never queued, so nothing can dispatch it, and `Get-Job` shows
        the reason."""
        kind = JobKind(kind)
        params_json = to_json(params, "job params")
        job_id = new_job_id()
        async with self._write() as tx:
            await tx.run(
                f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES"
                " (?, ?, 'failed', ?, ?, ?, '{}', NULL, ?, 0, ?, NULL, ?, ?, ?, ?, ?, 0)",
                (
                    job_id,
                    kind.value,
                    agent_id,
                    data_source_id,
                    params_json,
                    error,
                    tx.now,
                    tx.now,
                    tx.now,
                    JobTrigger(trigger).value,
                    attempt,
                    scheduled_for,
                ),
            )
            job = await _job(tx, job_id)
        log.info("job_refused", job_id=job_id, kind=kind.value, error=error)
        return job

    async def latest_backup_jobs(self) -> dict[DataSourceId, JobRow]:
        """Each data source's newest backup job, whatever its state."""
        async with self._read() as tx:
            rows = await tx.all(
                f"SELECT {JOB_COLUMNS} FROM jobs j WHERE kind = 'backup' AND rowid = ("
                " SELECT rowid FROM jobs k WHERE k.kind = 'backup'"
                " AND k.data_source_id = j.data_source_id"
                " ORDER BY k.created_at DESC, k.rowid DESC LIMIT 1)"
            )
        jobs = [job_from_row(r) for r in rows]
        return {j.data_source_id: j for j in jobs if j.data_source_id is not None}

    @staticmethod
    async def _check_backup_source(
        tx: Tx, agent_id: AgentId, data_source_id: DataSourceId | None
    ) -> None:
        if data_source_id is None:
            raise InvalidStateError("agent", agent_id, "a backup job needs a data source")
        ds = await tx.one(
            "SELECT agent_id, removed_at FROM data_sources WHERE id = ?", (data_source_id,)
        )
        if ds is None:
            raise NotFoundError("data source", data_source_id)
        if ds["agent_id"] != agent_id or ds["removed_at"] is not None:
            raise InvalidStateError(
                "data source",
                data_source_id,
                f"data source {data_source_id} is removed or not of agent {agent_id}",
            )
        active = await _active_backup(tx, data_source_id)
        if active is not None:
            raise ConflictError(
                "data source",
                data_source_id,
                f"backup job {active.id} of data source {data_source_id} is already"
                f" {active.state.value}",
            )

    async def transition_job(
        self,
        job_id: JobId,
        new_state: JobState,
        *,
        error: str | None = None,
        result: Mapping[str, Any] | None = None,
        warnings: int | None = None,
        retryable: bool | None = None,
    ) -> JobRow:
        """Move the job to `new_state`; see the module docstring for duplicates.
        `retryable` marks a failure as transient (the scheduler may try again)."""
        new_state = JobState(new_state)
        result_json = None if result is None else to_json(result, "job result")
        async with self._write() as tx:
            job = await _job(tx, job_id)
            if job.state.is_final or job.state is new_state:
                if job.state is not new_state or new_state.is_final:
                    log.info(
                        "job_transition_ignored",
                        job_id=job_id,
                        state=job.state.value,
                        reported=new_state.value,
                    )
                return job
            if new_state not in NEXT_STATES[job.state]:
                raise InvalidStateError(
                    "job",
                    job_id,
                    f"job {job_id} cannot go from {job.state.value} to {new_state.value}",
                )
            await tx.run(
                "UPDATE jobs SET state = :state,"
                " started_at = CASE WHEN :state = 'running' THEN :now ELSE started_at END,"
                " ended_at = CASE WHEN :final THEN :now ELSE ended_at END,"
                " error = coalesce(:error, error), result = coalesce(:result, result),"
                " warnings = coalesce(:warnings, warnings), updated_at = :now,"
                " retryable = coalesce(:retryable, retryable)"
                " WHERE id = :id",
                {
                    "state": new_state.value,
                    "now": tx.now,
                    "final": int(new_state.is_final),
                    "error": error,
                    "result": result_json,
                    "warnings": warnings,
                    "retryable": None if retryable is None else int(retryable),
                    "id": job_id,
                },
            )
            job = await _job(tx, job_id)
        log.info("job_state_changed", job_id=job_id, state=new_state.value)
        return job

    async def update_progress(self, job_id: JobId, progress: Mapping[str, Any]) -> bool:
        """Store the running job's progress; False (nothing stored) if it is not running."""
        progress_json = to_json(progress, "job progress")
        async with self._write() as tx:
            changed = await tx.run(
                "UPDATE jobs SET progress = ?, updated_at = ? WHERE id = ? AND state = 'running'",
                (progress_json, tx.now, job_id),
            )
            if not changed:
                await _job(tx, job_id)  # NotFoundError for an unknown job
        return bool(changed)

    async def get_job(self, job_id: str) -> JobRow:
        async with self._read() as tx:
            return await _job(tx, job_id)

    async def list_jobs(
        self,
        state: JobState | None = None,
        agent_id: AgentId | None = None,
        data_source_id: DataSourceId | None = None,
        limit: int = 100,
    ) -> list[JobRow]:
        """Newest first."""
        where, params = ["1 = 1"], []
        for column, value in (
            ("state", None if state is None else JobState(state).value),
            ("agent_id", agent_id),
            ("data_source_id", data_source_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        async with self._read() as tx:
            rows = await tx.all(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE {' AND '.join(where)}"
                " ORDER BY created_at DESC, rowid DESC LIMIT ?",
                [*params, max(0, int(limit))],
            )
        return [job_from_row(r) for r in rows]

    async def active_backup_for(self, data_source_id: DataSourceId) -> JobRow | None:
        """The queued or running backup of the data source, if any."""
        async with self._read() as tx:
            return await _active_backup(tx, data_source_id)

    async def fail_unfinished_jobs(self, reason: str = "server restarted") -> list[JobId]:
        """Fail every queued or running job (call at server start); returns their ids.
        The failure is transient (retryable): the job's work may well succeed now."""
        async with self._write() as tx:
            rows = await tx.all(
                "UPDATE jobs SET state = 'failed', error = ?, ended_at = ?, updated_at = ?,"
                " retryable = 1"
                f" WHERE state IN {_ACTIVE_SQL} RETURNING id",
                (reason, tx.now, tx.now),
            )
        failed = [JobId(r[0]) for r in rows]
        if failed:
            log.warning("unfinished_jobs_failed", count=len(failed), reason=reason)
        return failed

    async def prune_jobs(self, older_than: float) -> int:
        """Delete finished jobs that ended before `older_than`; returns how many."""
        async with self._write() as tx:
            return await tx.run(
                f"DELETE FROM jobs WHERE state IN {_FINAL_SQL} AND ended_at < ?", (older_than,)
            )
