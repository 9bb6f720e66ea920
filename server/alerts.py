"""Opening and resolving alerts, and telling a webhook about it.

`AlertCenter.open` and `AlertCenter.resolve` are idempotent: opening an open alert updates
it (message, severity, details) without a new notification, resolving a resolved or
unknown one does nothing. Each stores its change in the catalog and returns; the webhook
(``alerts.webhook_url``, read on every event so a SIGHUP applies) is called from one
background task fed by a bounded queue, so a slow or dead receiver never blocks a caller.

Webhook contract: ``POST <url>`` with ``{"event": "opened" | "resolved", "alert": {...}}``
(the alert as `alert_json` shapes it, the same object ``GET /api/v1/alerts`` lists). A 2xx
answer is delivery; a connection failure, timeout, 408, 429 or 5xx is retried with
exponential backoff up to `WEBHOOK_ATTEMPTS` times; any other answer is given up at once.
A notification that still fails, or that does not fit the queue, is logged and dropped:
the alert itself is in the catalog either way.

Alert kinds, and the subject each names:

* `FAILED_JOB`: a data source id (its latest backup failed) or a restore's job id.
* `MISSED_BACKUP`: a data source id (no RP for longer than its sync frequency + grace).
* `AGENT_OFFLINE`: an agent id.
* `POOL_USAGE`, `POOL_RESERVE`: the storage pool's path.
* `CLOUD_CONNECTION`: the registered vault's id (not connected, or the vault expired or
  deprovisioned: server/cloud_health.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import aiohttp
import structlog

from server.catalog import Catalog
from server.catalog_errors import CatalogError
from server.catalog_rows import AlertRow, AlertSeverity

__all__ = [
    "AGENT_OFFLINE",
    "CLOUD_CONNECTION",
    "FAILED_JOB",
    "MISSED_BACKUP",
    "POOL_RESERVE",
    "POOL_USAGE",
    "AlertCenter",
    "alert_json",
]

log = structlog.get_logger()

FAILED_JOB: Final = "failed_job"
MISSED_BACKUP: Final = "missed_backup"
AGENT_OFFLINE: Final = "agent_offline"
POOL_USAGE: Final = "pool_usage"
POOL_RESERVE: Final = "pool_reserve"
CLOUD_CONNECTION: Final = "cloud_connection"

WEBHOOK_QUEUE: Final = 256
WEBHOOK_ATTEMPTS: Final = 4
WEBHOOK_BACKOFF_SECONDS: Final = 1.0
WEBHOOK_TIMEOUT_SECONDS: Final = 10.0
CLOSE_DRAIN_SECONDS: Final = 2.0
_RETRY_STATUSES: Final = frozenset({408, 429})

Event = Literal["opened", "resolved"]
SessionFactory = Callable[[], aiohttp.ClientSession]


def alert_json(a: AlertRow) -> dict[str, Any]:
    return {
        "id": a.id,
        "kind": a.kind,
        "subject": a.subject,
        "severity": a.severity.value,
        "message": a.message,
        "details": dict(a.details),
        "opened_at": a.opened_at,
        "updated_at": a.updated_at,
        "resolved_at": a.resolved_at,
    }


@dataclass(frozen=True, slots=True)
class _Notice:
    event: Event
    alert: AlertRow


class _WebhookError(Exception):
    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class AlertCenter:
    """The one way the server opens and resolves alerts. `close` at shutdown."""

    def __init__(
        self,
        catalog: Catalog,
        webhook_url: Callable[[], str],
        *,
        session_factory: SessionFactory = aiohttp.ClientSession,
        queue_size: int = WEBHOOK_QUEUE,
        attempts: int = WEBHOOK_ATTEMPTS,
        backoff_seconds: float = WEBHOOK_BACKOFF_SECONDS,
        timeout_seconds: float = WEBHOOK_TIMEOUT_SECONDS,
    ) -> None:
        self.catalog = catalog
        self._webhook_url = webhook_url
        self._session_factory = session_factory
        self._queue: asyncio.Queue[_Notice] = asyncio.Queue(maxsize=queue_size)
        self._attempts = max(1, attempts)
        self._backoff = backoff_seconds
        self._timeout = timeout_seconds
        self._sender: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def open(
        self,
        kind: str,
        subject: str,
        message: str,
        *,
        severity: AlertSeverity | str = AlertSeverity.ERROR,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Open (or update) the alert (kind, subject). Never raises for a catalog failure:
        an alert is a report about a problem and must not become a second one."""
        try:
            row, new = await self.catalog.open_alert(kind, subject, severity, message, details)
        except CatalogError as err:
            log.error("alert_store_failed", kind=kind, subject=subject, error=str(err))
            return
        if new:
            log.warning(
                "alert_opened",
                alert_id=row.id,
                kind=kind,
                subject=subject,
                severity=row.severity.value,
                message=row.message,
            )
            self._notify("opened", row)

    async def resolve(self, kind: str, subject: str) -> None:
        """Resolve the alert (kind, subject) if it is open."""
        try:
            row = await self.catalog.resolve_alert(kind, subject)
        except CatalogError as err:
            log.error("alert_store_failed", kind=kind, subject=subject, error=str(err))
            return
        if row is not None:
            log.info("alert_resolved", alert_id=row.id, kind=kind, subject=subject)
            self._notify("resolved", row)

    async def close(self, drain_seconds: float = CLOSE_DRAIN_SECONDS) -> None:
        """Give queued notifications `drain_seconds` to go out, then stop the sender."""
        self._closed = True
        sender, self._sender = self._sender, None
        if sender is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_seconds):
                    await self._queue.join()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        left = self._queue.qsize()
        if left:
            log.warning("alert_webhook_dropped", count=left, why="server shutting down")
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- webhook ---------------------------------------------------------------

    def _notify(self, event: Event, row: AlertRow) -> None:
        if self._closed or not self._webhook_url():
            return
        try:
            self._queue.put_nowait(_Notice(event, row))
        except asyncio.QueueFull:
            log.warning("alert_webhook_dropped", alert_id=row.id, notice=event, why="queue full")
            return
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_loop(), name="alert-webhook")

    async def _send_loop(self) -> None:
        while True:
            notice = await self._queue.get()
            try:
                await self._deliver(notice)
            except asyncio.CancelledError:
                raise
            except Exception:  # the task boundary: one bad notice must not stop the rest
                log.exception("alert_webhook_crashed", alert_id=notice.alert.id)
            finally:
                self._queue.task_done()

    async def _deliver(self, notice: _Notice) -> None:
        body = {"event": notice.event, "alert": alert_json(notice.alert)}
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            url = self._webhook_url()
            if not url:
                return  # switched off by a reload meanwhile
            try:
                await self._post(url, body)
            except _WebhookError as err:
                last_try = attempt == self._attempts or not err.retry
                log.warning(
                    "alert_webhook_failed",
                    alert_id=notice.alert.id,
                    notice=notice.event,
                    attempt=attempt,
                    error=str(err),
                    giving_up=last_try,
                )
                if last_try:
                    return
                await asyncio.sleep(delay)
                delay *= 2
            else:
                log.info("alert_webhook_sent", alert_id=notice.alert.id, notice=notice.event)
                return

    async def _post(self, url: str, body: dict[str, Any]) -> None:
        if self._session is None:
            self._session = self._session_factory()
        try:
            async with (
                asyncio.timeout(self._timeout),
                self._session.post(url, json=body) as resp,
            ):
                if 200 <= resp.status < 300:
                    return
                retry = resp.status >= 500 or resp.status in _RETRY_STATUSES
                raise _WebhookError(f"{url} answered HTTP {resp.status}", retry=retry)
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise _WebhookError(f"{url}: {type(err).__name__}: {err}", retry=True) from err
