"""Command handling: which commands run, each job exactly once, and what is reported.

Flow of one ``cmd.backup`` / ``cmd.restore``:

1. :func:`agent.commands.check_command` verifies it (signature under the command key,
   addressed to this agent, not expired, well-formed); anything else is logged
   (``command_dropped`` with the reason) and dropped, unanswered.
2. The job id is recorded in the :class:`~agent.job_ledger.JobLedger` (fsynced) *before*
   anything else; a job id already there is a duplicate delivery (QoS 1, a restart, a
   re-send) and is dropped (``command_duplicate``): it never runs twice.
3. ``event.accepted`` is published, the job runs as a task, ``event.progress`` follows at
   most ~2/s; at the end the ledger records the final status, then ``event.result``
   ``{status, error, warnings, warning_samples (first 20), stats, retryable}`` is published
   (``retryable``: the failure is transient, e.g. the server was unreachable).

``cmd.cancel {job_id}`` asks a running job to stop: its :class:`JobContext` cancel flag is
set (the walker checks it between objects), the callbacks registered with
:meth:`JobContext.on_cancel` run (e.g. failing the HTTP calls in flight), and the runner
aborts its server session and returns ``cancelled``. An unknown or finished job is
logged and ignored.

Boundaries: a runner's unexpected exception becomes a ``failed`` result with its message
(the broad ``except`` lives only here). :meth:`JobManager.shutdown` (SIGTERM) cancels
every job the same way and waits for their results. Jobs that a previous process left
``running`` in the ledger (it crashed) are reported ``failed`` by
:meth:`JobManager.report_interrupted` at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import structlog

from agent import protocol
from agent.commands import (
    BackupCommand,
    CancelCommand,
    CommandRejected,
    RestoreCommand,
    check_command,
)
from agent.job_ledger import JobLedger
from agent.progress import ProgressReporter

__all__ = [
    "WARNING_SAMPLES",
    "EventSink",
    "JobContext",
    "JobManager",
    "JobOutcome",
    "JobRunner",
]

log = structlog.get_logger()

WARNING_SAMPLES: Final = 20
SHUTDOWN_GRACE: Final = 20.0


class EventSink(Protocol):
    """Where events go (``agent.mqtt_link.MqttLink``)."""

    async def publish_event(
        self, kind: str, body: Mapping[str, Any], *, job_id: str | None, keep: bool
    ) -> None: ...


@dataclass(slots=True)
class JobOutcome:
    status: str  # one of protocol.RESULT_STATUSES
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    warnings_total: int | None = None  # when more happened than `warnings` holds
    stats: dict[str, Any] = field(default_factory=dict)
    # A failure that may well not happen again (the server was unreachable): the server's
    # scheduler retries such a job; others fail for good with their reason.
    retryable: bool = False

    def body(self) -> dict[str, Any]:
        total = self.warnings_total if self.warnings_total is not None else len(self.warnings)
        return {
            "status": self.status,
            "error": self.error,
            "warnings": total,
            "warning_samples": self.warnings[:WARNING_SAMPLES],
            "stats": self.stats,
            "retryable": self.retryable,
        }


class JobContext:
    """What a runner gets besides its command: cancellation and progress."""

    def __init__(self, job_id: str, progress: ProgressReporter) -> None:
        self.job_id = job_id
        self.progress = progress
        self.cancel_flag = threading.Event()  # for worker threads
        self.cancelled = asyncio.Event()  # for the loop
        self._callbacks: list[Callable[[], None]] = []

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on cancellation (at once when already cancelled)."""
        if self.cancel_flag.is_set():
            callback()
        else:
            self._callbacks.append(callback)

    def cancel(self) -> None:
        if self.cancel_flag.is_set():
            return
        self.cancel_flag.set()
        self.cancelled.set()
        for callback in self._callbacks:
            try:
                callback()
            except Exception as err:  # a failing hook must not stop the others
                log.warning("cancel_hook_failed", job_id=self.job_id, error=str(err))


class JobRunner(Protocol):
    """Runs one job to its outcome. Cancellation is cooperative (see JobContext)."""

    async def backup(self, cmd: BackupCommand, ctx: JobContext) -> JobOutcome: ...
    async def restore(self, cmd: RestoreCommand, ctx: JobContext) -> JobOutcome: ...


@dataclass(slots=True)
class _Running:
    kind: str
    ctx: JobContext
    task: asyncio.Task[None]


class JobManager:
    def __init__(
        self,
        *,
        agent_id: str,
        command_key: bytes,
        ledger: JobLedger,
        events: EventSink,
        runner: JobRunner,
        on_jobs_changed: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
        progress_interval: float = 0.5,
    ) -> None:
        self.agent_id = agent_id
        self._key = command_key
        self._ledger = ledger
        self._events = events
        self._runner = runner
        self._on_jobs_changed = on_jobs_changed
        self._clock = clock
        self._progress_interval = progress_interval
        self._running: dict[str, _Running] = {}
        self._closing = False

    def running_jobs(self) -> list[str]:
        return sorted(self._running)

    async def handle(self, topic: str, payload: bytes) -> None:
        """Handle one message from the cmd topic (MqttLink's ``on_command``)."""
        try:
            msg, cmd = check_command(
                payload, topic=topic, agent_id=self.agent_id, key=self._key, now=self._clock()
            )
        except CommandRejected as err:
            log.warning("command_dropped", topic=topic, reason=str(err))
            return
        if isinstance(cmd, CancelCommand):
            self.cancel(cmd.job_id)
            return
        if self._closing:
            log.warning("command_dropped", job_id=cmd.job_id, reason="agent is shutting down")
            return
        kind = "backup" if isinstance(cmd, BackupCommand) else "restore"
        try:
            fresh = await self._ledger.accept(cmd.job_id, kind, self._clock())
        except OSError as err:
            # Without a durable record a re-delivery could run the job twice: refuse it.
            log.error("command_refused", job_id=cmd.job_id, reason=str(err))
            return
        if not fresh:
            rec = self._ledger.get(cmd.job_id)
            log.info(
                "command_duplicate",
                job_id=cmd.job_id,
                msg_id=msg.msg_id,
                state=rec.state if rec else None,
            )
            return
        await self._events.publish_event(
            protocol.EVENT_ACCEPTED, {"kind": kind}, job_id=cmd.job_id, keep=True
        )
        job_id = cmd.job_id

        async def publish_progress(body: Mapping[str, Any]) -> None:
            await self._events.publish_event(
                protocol.EVENT_PROGRESS, body, job_id=job_id, keep=False
            )

        progress = ProgressReporter(publish_progress, interval=self._progress_interval)
        ctx = JobContext(cmd.job_id, progress)
        task = asyncio.create_task(self._run(kind, cmd, ctx), name=f"job-{cmd.job_id}")
        self._running[cmd.job_id] = _Running(kind, ctx, task)
        log.info("job_accepted", job_id=cmd.job_id, kind=kind)
        await self._changed()

    def cancel(self, job_id: str) -> bool:
        running = self._running.get(job_id)
        if running is None:
            log.info("cancel_ignored", job_id=job_id, reason="no such running job")
            return False
        log.info("job_cancel_requested", job_id=job_id)
        running.ctx.cancel()
        return True

    async def _changed(self) -> None:
        if self._on_jobs_changed is not None:
            await self._on_jobs_changed()

    async def _run(self, kind: str, cmd: BackupCommand | RestoreCommand, ctx: JobContext) -> None:
        started = time.monotonic()
        ctx.progress.start(f"progress-{ctx.job_id}")
        with structlog.contextvars.bound_contextvars(job_id=ctx.job_id, kind=kind):
            try:
                if isinstance(cmd, BackupCommand):
                    outcome = await self._runner.backup(cmd, ctx)
                else:
                    outcome = await self._runner.restore(cmd, ctx)
            except asyncio.CancelledError:
                # Only shutdown's last resort cancels the task: report, then stop.
                await self._finish(ctx, JobOutcome("cancelled", error="agent stopped"), started)
                raise
            except Exception as err:
                log.exception("job_crashed", error=str(err))
                outcome = JobOutcome("failed", error=f"{type(err).__name__}: {err}")
            if outcome.status not in protocol.RESULT_STATUSES:
                outcome = JobOutcome("failed", error=f"runner returned {outcome.status!r}")
            await self._finish(ctx, outcome, started)

    async def _finish(self, ctx: JobContext, outcome: JobOutcome, started: float) -> None:
        await ctx.progress.stop()
        body = outcome.body()
        # Ledger first: a crash before the result is published loses the result (the server
        # times the job out), never contradicts it with a later "interrupted".
        try:
            await self._ledger.finish(ctx.job_id, outcome.status, self._clock())
        except OSError as err:
            log.error("job_ledger_write_failed", job_id=ctx.job_id, error=str(err))
        await self._events.publish_event(protocol.EVENT_RESULT, body, job_id=ctx.job_id, keep=True)
        # Listed as running until here, so shutdown() waits for the result to go out.
        self._running.pop(ctx.job_id, None)
        log.info(
            "job_finished",
            status=outcome.status,
            error=outcome.error,
            warnings=body["warnings"],
            seconds=round(time.monotonic() - started, 3),
            stats=outcome.stats,
        )
        await self._changed()

    async def report_interrupted(self) -> None:
        """Report jobs a previous agent process left running as failed."""
        for job_id, rec in self._ledger.interrupted():
            if job_id in self._running:
                continue
            log.warning("job_interrupted", job_id=job_id, kind=rec.kind)
            outcome = JobOutcome("failed", error="the agent stopped during the job", retryable=True)
            await self._events.publish_event(
                protocol.EVENT_RESULT, outcome.body(), job_id=job_id, keep=True
            )
            await self._ledger.finish(job_id, outcome.status, self._clock())

    async def shutdown(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Cancel every running job and wait (``grace`` s, then force) for its result."""
        self._closing = True
        tasks = [r.task for r in self._running.values()]
        for running in list(self._running.values()):
            running.ctx.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            log.warning("job_force_stopped", task=task.get_name())
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
