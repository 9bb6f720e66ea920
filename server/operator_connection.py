"""REST handlers of the cloud connection health (spec in server/api/__init__.py), the data
behind ``stockade Get-CloudConnection``:

    GET  /api/v1/cloud/connection        the monitor's current status (no I/O)
    POST /api/v1/cloud/connection/probe  probe the vault now, then the new status

Both answer `connection_json`: `CloudStatus.to_json()` (unix seconds, like the rest of
the API) plus the same instants as ISO 8601 UTC strings (``*_iso``) for people reading
the raw JSON. 503 while the connectivity monitor (server/cloud_health.py) is not running,
which the CLI reports as "not ready" (exit 3). A failed probe is not an HTTP error: it is
the answer, with ``connected`` false and the classified reason in ``last_reason``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final, Protocol

import structlog
from aiohttp import web

from server.cloud_status import CloudStatus
from server.context import CTX_KEY
from server.http_json import http_error

__all__ = ["NOT_RUNNING", "CloudMonitor", "connection_json", "iso_utc", "routes"]

log = structlog.get_logger()

NOT_RUNNING: Final = (
    "the cloud connection monitor is not running yet (it starts with the server);"
    " try again in a few seconds"
)
_TIMES: Final = ("last_success", "last_failure", "last_probe", "checked_at")


class CloudMonitor(Protocol):
    """What these handlers need of server/cloud_health.py's CloudHealth."""

    def status(self) -> CloudStatus: ...

    async def probe(self) -> CloudStatus: ...


def iso_utc(timestamp: float | None) -> str | None:
    """Unix seconds -> ``2026-01-01T12:00:00.250Z``; None stays None."""
    if timestamp is None:
        return None
    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def connection_json(status: CloudStatus) -> dict[str, Any]:
    doc = status.to_json()
    for key in _TIMES:
        doc[f"{key}_iso"] = iso_utc(doc[key])
    doc["summary"] = status.summary()
    return doc


def _monitor(request: web.Request) -> CloudMonitor:
    cloud: CloudMonitor | None = request.app[CTX_KEY].cloud
    if cloud is None:
        raise http_error(web.HTTPServiceUnavailable, NOT_RUNNING)
    return cloud


async def get_connection(request: web.Request) -> web.Response:
    return web.json_response(connection_json(_monitor(request).status()))


async def probe_connection(request: web.Request) -> web.Response:
    status = await _monitor(request).probe()
    log.info(
        "cloud_probe_by_operator",
        connectivity=status.connectivity.value,
        vault_state=None if status.vault_state is None else status.vault_state.value,
        reason=None if status.last_reason is None else status.last_reason.value,
    )
    return web.json_response(connection_json(status))


def routes() -> list[web.RouteDef]:
    b = "/api/v1"
    return [
        web.get(f"{b}/cloud/connection", get_connection),
        web.post(f"{b}/cloud/connection/probe", probe_connection),
    ]
