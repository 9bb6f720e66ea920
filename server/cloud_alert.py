"""The `CLOUD_CONNECTION` alert and the log fields of the connection monitor
(server/cloud_health.py).

The alert (subject: the registered vault's id) is open while a vault is registered and
not connected+active, except a ``disconnected`` that only operations saw: a retried upload
that failed once must not page anyone; a failed probe confirms it. Severity: critical
when the policy stops something (connectivity lost, vault expired or deprovisioned),
error otherwise. Resolving it, or an alert of a vault no longer registered, is automatic.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from server.alerts import CLOUD_CONNECTION, AlertCenter
from server.catalog import Catalog
from server.catalog_rows import AlertSeverity
from server.cloud_contact import HealthRecord
from server.cloud_status import CloudStatus, Connectivity
from storage_pool.vault.header import VaultState

__all__ = ["alarm", "log_fields", "sync_alert"]


def _utc(t: float | None) -> str:
    if t is None:
        return "never"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def alarm(status: CloudStatus, record: HealthRecord) -> bool:
    """Whether the alert should be open for `status`."""
    if not status.registered or status.connected:
        return False
    if status.connectivity is Connectivity.DISCONNECTED:
        return status.vault_state is not VaultState.ACTIVE or record.last_probe_ok is False
    return True


async def sync_alert(
    alerts: AlertCenter,
    catalog: Catalog,
    status: CloudStatus,
    record: HealthRecord,
    vault_id: str | None,
) -> None:
    """Open (or update) the alert of `vault_id`, or resolve it, as `status` says."""
    wanted = vault_id is not None and alarm(status, record)
    for alert in await catalog.open_alerts_of_kind(CLOUD_CONNECTION):
        if not wanted or alert.subject != vault_id:
            await alerts.resolve(CLOUD_CONNECTION, alert.subject)
    if not wanted or vault_id is None:
        return
    error = f": {record.last_error}" if record.last_error else ""
    reason = f" ({record.last_reason.value})" if record.last_reason is not None else ""
    stops = status.connectivity is Connectivity.LOST or status.vault_state is not VaultState.ACTIVE
    await alerts.open(
        CLOUD_CONNECTION,
        vault_id,
        f"vault {status.vault}: {status.summary()}; last successful contact"
        f" {_utc(record.last_success)}; last error{reason}{error}",
        severity=AlertSeverity.CRITICAL if stops else AlertSeverity.ERROR,
        details={**log_fields(status, record), "last_failure": record.last_failure},
    )


def log_fields(status: CloudStatus, record: HealthRecord) -> dict[str, Any]:
    return {
        "connectivity": status.connectivity.value,
        "vault_state": None if status.vault_state is None else status.vault_state.value,
        "vault": status.vault,
        "last_success": record.last_success,
        "last_reason": None if record.last_reason is None else record.last_reason.value,
        "last_error": record.last_error,
        "state_cause": record.state_cause,
        "rejections": record.rejections,
    }
