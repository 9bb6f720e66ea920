"""The job engine for agent jobs (backup, restore): dispatch over MQTT, events, lifecycle.

Lifecycle of a job (states in the catalog, transitions enforced there):

    queued --(agent sends event.accepted)--> running --(event.result)--> final state
       \\--(cancel / agent wait deadline)--> cancelled / failed

A queued job is dispatched (its signed command published with QoS 1) when its agent is
online and, for backups, fewer than `max_concurrent_backups` backups are in flight; an
unanswered command is sent again every `RESEND_SECONDS` (the agent runs a job id once).
A job whose agent stays offline longer than `agent_wait_seconds` (queued, or running when
the agent went away) fails with that reason.
When an agent comes back (its retained `state` message lists the jobs it is running), a
running job it no longer knows fails as "agent restarted". Results are idempotent: the
catalog ignores a second final state, because QoS 1 may deliver a result twice.

The backup's recovery point is committed by the data plane (server/data_plane.py) before
the agent reports success, so the catalog row and the pool record exist when the job ends.
Every final state is written under the job's lock in `commits` (server/job_commits.py),
the lock the data plane's commit holds: a job ended before its commit makes the commit
refuse; a failure or stop that comes after the commit keeps the RP and ends the job
``succeeded_with_warnings`` saying so, never "failed" beside an RP.

Held restores (a restore from the cloud re-seeding the pool first, server/cloud_restore.py)
run their server phase in a task registered with `hold_task`. Stop-Job and the cloud policy
end the job first, then cancel that task and wait for it to end: the re-seed stops at its
next await, and a pool commit it had started finishes with its catalog row first.

The cloud policy (server/cloud_gate.py), when `gate` is set: `start_backup` and
`start_restore` raise `CloudPolicyRefused` for an operation it does not allow; each tick,
before dispatching, fails the queued and running jobs it no longer allows (`stop_refused`,
also called by the gate when the cloud status changes), so a job queued while allowed and
refused before it runs fails with the reason instead of starting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from agent import protocol as p
from server.catalog import Catalog, JobKind, JobState
from server.catalog_errors import CatalogError, InvalidStateError
from server.catalog_rows import JobTrigger
from server.cloud_gate import CloudGate, operation_of, restore_operation
from server.cloud_status import Decision, Operation
from server.ids import AgentId, JobId
from server.job_commits import CommitGuard, kept_after_commit
from server.loops import repeat

log = structlog.get_logger()

RESEND_SECONDS = 30.0
COMMAND_TTL_SECONDS = 24 * 3600.0
TICK_SECONDS = 1.0

Publisher = Callable[[str, p.Message], Awaitable[None]]


@dataclass(slots=True)
class AgentPresence:
    online: bool = False
    since: float = 0.0
    running: frozenset[str] = frozenset()


@dataclass(slots=True)
class JobLimits:
    max_concurrent_backups: int = 4
    agent_wait_seconds: float = 3600.0


@dataclass(slots=True)
class _Dispatch:
    sent_at: float = 0.0


@dataclass(slots=True)
class JobManager:
    catalog: Catalog
    publish: Publisher
    limits: JobLimits
    clock: Callable[[], float] = time.time
    on_final: Callable[[Any], Awaitable[None]] | None = None
    # Raises (server.capacity.InsufficientStorageError) when the pool is under its reserve.
    capacity_check: Callable[[], Awaitable[object]] | None = None
    # Stops a job the server runs itself (server/job_stop.py dispatches on its kind, and
    # refuses kinds that cannot stop); None: such jobs cannot stop.
    server_cancel: Callable[[Any], Awaitable[Any]] | None = None
    # The cloud policy every start and dispatch asks; None: everything is allowed.
    gate: CloudGate | None = None
    # Orders each backup's RP commit (the data plane) with the job's final state.
    commits: CommitGuard = field(default_factory=CommitGuard)
    presence: dict[str, AgentPresence] = field(default_factory=dict)
    # Restore jobs with a server phase first (re-seeding from the vault): running, not
    # dispatched until released (True), never failed as "agent restarted" meanwhile.
    _held: dict[str, bool] = field(default_factory=dict)
    # The server-phase task of a held job (a cloud restore's re-seed), cancelled if the
    # cloud policy stops the job.
    _server_phase: dict[str, asyncio.Task[Any]] = field(default_factory=dict)
    _dispatched: dict[str, _Dispatch] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    # -- operator actions ------------------------------------------------------

    async def start_backup(
        self,
        data_source_id: str,
        *,
        trigger: JobTrigger = JobTrigger.MANUAL,
        attempt: int = 1,
        scheduled_for: float | None = None,
    ) -> Any:
        ds = await self.catalog.get_data_source(data_source_id)
        if self.gate is not None:
            self.gate.check(Operation.BACKUP_TO_DISK)
        if self.capacity_check is not None:
            await self.capacity_check()
        active = await self.catalog.active_backup_for(ds.id)
        if active is not None:
            raise InvalidStateError(
                "data source",
                ds.id,
                f"a backup of it is already {active.state} (job {active.id})",
            )
        job = await self.catalog.create_job(
            JobKind.BACKUP,
            ds.agent_id,
            ds.id,
            {"paths": list(ds.paths), "excludes": list(ds.excludes), "data_source_name": ds.name},
            trigger=trigger,
            attempt=attempt,
            scheduled_for=scheduled_for,
        )
        log.info("job_queued", job_id=job.id, kind="backup", data_source=ds.id)
        self._wake.set()
        return job

    async def start_restore(
        self, target_agent_id: str, params: Mapping[str, Any], *, hold: bool = False
    ) -> Any:
        """`hold`: the job starts running on the server (its progress can be shown) and is
        dispatched only after `release_held`; `fail_held` ends it. ``"from_cloud": true``
        in `params` makes it a restore from cloud for the policy."""
        if self.gate is not None:
            self.gate.check(restore_operation(params))
        if hold:
            async with self._lock:  # a tick between create and hold would dispatch it
                job = await self.catalog.create_job(
                    JobKind.RESTORE,
                    AgentId(target_agent_id),
                    params.get("data_source_id"),
                    dict(params),
                )
                job = await self.catalog.transition_job(job.id, JobState.RUNNING)
                self._held[job.id] = False
            log.info("job_held", job_id=job.id, kind="restore", agent_id=target_agent_id)
            return job
        job = await self.catalog.create_job(
            JobKind.RESTORE, AgentId(target_agent_id), params.get("data_source_id"), dict(params)
        )
        log.info("job_queued", job_id=job.id, kind="restore", agent_id=target_agent_id)
        self._wake.set()
        return job

    def hold_task(self, job_id: str, task: asyncio.Task[Any]) -> None:
        """`task` is the server phase of held job `job_id` (stopped with the job)."""
        if job_id in self._held and not task.done():
            self._server_phase[job_id] = task
            task.add_done_callback(lambda _t: self._server_phase.pop(job_id, None))

    def is_held(self, job_id: str) -> bool:
        """Whether `job_id` is still in its server phase (not yet released)."""
        return self._held.get(job_id) is False

    def release_held(self, job_id: str) -> None:
        if job_id in self._held:
            self._held[job_id] = True
            self._wake.set()

    async def fail_held(self, job_id: str, error: str) -> Any:
        if self._held.pop(job_id, None) is None:
            # It already ended (Stop-Job, the cloud policy): its first final state stands.
            return await self.catalog.get_job(job_id)
        return await self._finish(job_id, "failed", error=error)

    async def cancel(self, job_id: str) -> Any:
        job = await self.catalog.get_job(job_id)
        if job.state in p.FINAL_STATES:
            return job
        agent_id = job.agent_id
        if agent_id is None:
            if self.server_cancel is not None:
                return await self.server_cancel(job)
            raise InvalidStateError(
                "job", job.id, f"{job.kind} jobs run on the server and cannot be stopped"
            )
        pres = self.presence.get(agent_id)
        phase = self._server_phase.pop(job_id, None)
        if job.state == "queued" or pres is None or not pres.online or job_id in self._held:
            job = await self._finish(job.id, "cancelled", error="cancelled by operator")
        if phase is not None:
            await _end_server_phase(phase)
        if job_id in self._dispatched or job.state == "running":
            await self._send(agent_id, p.CMD_CANCEL, job_id, {"job_id": job_id})
        return job

    async def stop_refused(self, refused: Mapping[Operation, Decision]) -> list[JobId]:
        """Fail the queued and running agent jobs whose operation `refused` names, each
        with its reason (server/cloud_gate.py); the ids of the jobs stopped."""
        async with self._lock:
            return await self._stop_refused(refused)

    async def _stop_refused(
        self, refused: Mapping[Operation, Decision], active: Sequence[Any] | None = None
    ) -> list[JobId]:
        """`active`: the queued and running jobs, if the caller has just listed them."""
        stopped: list[JobId] = []
        if not refused:
            return stopped
        if active is None:
            active = [
                *await self.catalog.list_jobs(state=JobState.RUNNING, limit=10_000),
                *await self.catalog.list_jobs(state=JobState.QUEUED, limit=10_000),
            ]
        for job in active:
            if job.agent_id is None:
                continue  # server jobs: the online runner stops its own
            op = operation_of(job, held=self.is_held(job.id))
            decision = refused.get(op) if op is not None else None
            if decision is not None:
                await self._stop(job, decision.reason)
                stopped.append(job.id)
        return stopped

    async def _stop(self, job: Any, reason: str) -> None:
        """Stop-Job, except that the job ends failed with `reason`, not retryable. It fails
        first (its upload session goes with it, through on_final), then the agent is told."""
        tell_agent = job.id in self._dispatched or (
            job.state == "running" and self._held.get(job.id) is not False
        )
        phase = self._server_phase.pop(job.id, None)
        await self._finish(job.id, "failed", error=reason, retryable=False)
        log.warning("job_stopped_by_cloud_policy", job_id=job.id, kind=str(job.kind), error=reason)
        if phase is not None:
            await _end_server_phase(phase)
        if tell_agent and job.agent_id is not None:
            await self._send(job.agent_id, p.CMD_CANCEL, job.id, {"job_id": job.id})

    # -- agent events ----------------------------------------------------------

    async def agent_state(self, agent_id: str, online: bool, running: list[str]) -> None:
        now = self.clock()
        prev = self.presence.get(agent_id)
        self.presence[agent_id] = AgentPresence(online, now, frozenset(running))
        if online and (prev is None or not prev.online):
            # Jobs it accepted before but no longer runs died with its previous process.
            for job in await self.catalog.list_jobs(
                state=JobState.RUNNING, agent_id=AgentId(agent_id)
            ):
                if job.id not in running and job.id not in self._held:
                    await self._finish(
                        job.id,
                        "failed",
                        error="the agent restarted while running this job; run it again",
                        retryable=True,
                    )
            for job_id in [j for j, d in self._dispatched.items() if d.sent_at]:
                self._dispatched[job_id].sent_at = 0.0  # resend at once to the new session
        self._wake.set()

    async def agent_event(self, agent_id: str, msg: p.Message) -> None:
        """One event from `agent_id` (already authenticated by its topic)."""
        if msg.job_id is None:
            return
        try:
            job = await self.catalog.get_job(msg.job_id)
        except CatalogError:
            log.warning("event_for_unknown_job", agent_id=agent_id, job_id=msg.job_id)
            return
        if job.agent_id != agent_id:
            log.warning("event_for_foreign_job", agent_id=agent_id, job_id=msg.job_id)
            return
        if msg.type == p.EVENT_ACCEPTED:
            self._dispatched.pop(job.id, None)
            self._held.pop(job.id, None)
            if job.state == "queued":
                with contextlib.suppress(InvalidStateError):
                    await self.catalog.transition_job(job.id, JobState.RUNNING)
                    log.info("job_started", job_id=job.id, agent_id=agent_id)
        elif msg.type == p.EVENT_PROGRESS:
            if job.state == "running":
                await self.catalog.update_progress(job.id, _progress(msg.body))
        elif msg.type == p.EVENT_RESULT:
            self._dispatched.pop(job.id, None)
            status = msg.body.get("status")
            if status not in p.RESULT_STATUSES:
                log.warning("bad_result_status", job_id=job.id, status=str(status)[:40])
                return
            warnings = msg.body.get("warnings", 0)
            result = {k: msg.body.get(k) for k in ("stats", "rp_id", "warning_samples", "report")}
            stats = msg.body.get("stats")
            if isinstance(stats, dict):
                result["rp_id"] = result["rp_id"] or stats.get("rp_id")
                if job.state == "running":
                    # The last progress event may predate the end: show the final counts.
                    final = {
                        "files": stats.get("files"),
                        "bytes": stats.get("logical_bytes", stats.get("bytes")),
                    }
                    await self.catalog.update_progress(job.id, _progress(final))
            await self._finish(
                job.id,
                str(status),
                error=str(msg.body.get("error") or "") or None,
                result=result,
                warnings=warnings if isinstance(warnings, int) else 0,
                # The agent says whether a failure is transient (a lost connection) or not.
                retryable=status == "failed" and msg.body.get("retryable") is True,
            )

    # -- the loop --------------------------------------------------------------

    async def run(self) -> None:
        await repeat(
            self.tick,
            failed_event="job_tick_failed",
            interval=lambda: TICK_SECONDS,
            wake=self._wake,
        )

    async def tick(self) -> None:
        async with self._lock:
            now = self.clock()
            queued = await self.catalog.list_jobs(state=JobState.QUEUED, limit=10_000)
            running = await self.catalog.list_jobs(state=JobState.RUNNING, limit=10_000)
            if self.gate is not None:
                # Before dispatching: a job the policy no longer allows fails instead.
                stopped = set(await self._stop_refused(self.gate.refused(), [*running, *queued]))
                queued = [j for j in queued if j.id not in stopped]
                running = [j for j in running if j.id not in stopped]
            running_backups = sum(1 for j in running if j.kind == "backup")
            for job in running:
                if job.agent_id is None:
                    continue  # server jobs (prune, gc) are not the engine's
                pres = self.presence.get(job.agent_id)
                gone = now - pres.since if pres is not None and not pres.online else 0.0
                if gone > self.limits.agent_wait_seconds:
                    await self._finish(
                        job.id,
                        "failed",
                        error=f"agent {job.agent_id} went offline during the job and stayed"
                        f" away for {int(gone)} s",
                        retryable=True,
                    )
            released = [j for j in running if self._held.get(j.id)]
            for job in sorted(queued + released, key=lambda j: j.created_at):
                if job.agent_id is None:
                    continue
                pres = self.presence.get(job.agent_id)
                if pres is None or not pres.online:
                    waited = now - job.created_at
                    if waited > self.limits.agent_wait_seconds:
                        await self._finish(
                            job.id,
                            "failed",
                            error=(
                                f"agent {job.agent_id} stayed offline for"
                                f" {int(waited)} s (limit {int(self.limits.agent_wait_seconds)} s)"
                            ),
                            retryable=True,
                        )
                    continue
                d = self._dispatched.get(job.id)
                if d is not None and d.sent_at and now - d.sent_at < RESEND_SECONDS:
                    continue
                if job.kind == "backup" and d is None:
                    in_flight = running_backups + sum(1 for j in self._dispatched if j != job.id)
                    if in_flight >= self.limits.max_concurrent_backups:
                        continue
                await self._dispatch(job)

    async def _dispatch(self, job: Any) -> None:
        if job.kind == "backup":
            mtype = p.CMD_BACKUP
            body: dict[str, Any] = {
                "data_source_id": job.data_source_id,
                "paths": job.params.get("paths", []),
                "excludes": job.params.get("excludes", []),
            }
        else:
            mtype = p.CMD_RESTORE
            body = {
                k: job.params.get(k)
                for k in ("rp_id", "items", "target_path", "conflict", "source_agent_id")
            }
        await self._send(job.agent_id, mtype, job.id, body)
        self._dispatched.setdefault(job.id, _Dispatch()).sent_at = self.clock()
        log.info("job_dispatched", job_id=job.id, agent_id=job.agent_id, kind=job.kind)

    async def _send(self, agent_id: str, mtype: str, job_id: str, body: dict[str, Any]) -> None:
        now = self.clock()
        key = (await self.catalog.get_agent(agent_id)).command_key
        if key is None:
            log.warning("command_not_sent_unregistered", agent_id=agent_id, job_id=job_id)
            return
        msg = p.Message(
            type=mtype,
            agent_id=agent_id,
            body=body,
            job_id=job_id,
            issued_at=now,
            expires_at=now + COMMAND_TTL_SECONDS,
        ).signed(bytes.fromhex(key))
        await self.publish(agent_id, msg)

    async def _finish(
        self,
        job_id: str,
        state: str,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
        warnings: int | None = None,
        retryable: bool | None = None,
    ) -> Any:
        self._dispatched.pop(job_id, None)
        self._held.pop(job_id, None)
        async with self.commits.ending(job_id) as rp:
            if rp is not None and state in ("failed", "cancelled"):
                kept = kept_after_commit(rp, state, error, result, warnings)
                log.warning("job_end_after_commit", job_id=job_id, asked=state, rp_id=rp.id)
                state, error, result = kept.state, kept.error, kept.result
                warnings, retryable = kept.warnings, None
            job = await self.catalog.transition_job(
                JobId(job_id),
                JobState(state),
                error=error,
                result=result,
                warnings=warnings,
                retryable=retryable,
            )
            if job.state.is_final:
                self.commits.forget(job_id)
        if job.state == state:
            log.info("job_finished", job_id=job_id, state=state, error=error)
        if self.on_final is not None:
            await self.on_final(job)
        self._wake.set()
        return job


async def _end_server_phase(task: asyncio.Task[Any]) -> None:
    """Cancel a held job's server phase and wait until it has ended (its own cleanup, a
    settled pool commit included, runs first); its outcome was already reported."""
    task.cancel()
    await asyncio.wait({task})


def _progress(body: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("files", "bytes", "rate_bps", "bytes_total", "files_total"):
        value = body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            out[key] = value
    path = body.get("current_path")
    if isinstance(path, str):
        out["current_path"] = path[:1024]
    phase = body.get("phase")
    if isinstance(phase, str):
        out["phase"] = phase[:32]
    return out
