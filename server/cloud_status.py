"""Cloud connection status and the vault-state policy (the table in shared/DESIGN.md).

Pure code: no I/O, no clock of its own. `server/cloud_health.py` measures the status;
job starts and running jobs ask `decide` what is allowed; Get-CloudConnection, the REST API
and /metrics show the same `CloudStatus`.

Connectivity, measured from the last successful contact with the vault (a probe or any
vault operation that got an answer):

- ``connected``: the last contact attempt succeeded;
- ``disconnected``: the last attempt failed, but a contact succeeded within
  ``cloud.lost_after_days`` (MABS calls this "connected" too: nothing is stopped yet, online
  jobs fail and retry on their own);
- ``lost``: no successful contact for more than ``cloud.lost_after_days`` (15 by default),
  the "lost > 15 days" rows of the table;
- ``not_registered``: no vault is registered; cloud operations are refused for that reason
  and disk operations are allowed.

The policy table, enforced exactly (``disconnected`` follows the ``connected`` rows):

==============  ============  ===============  ==============  ==================  =================
connectivity    vault         backup to cloud  backup to disk  restore from cloud  restore from disk
==============  ============  ===============  ==============  ==================  =================
connected       active        allowed          allowed         allowed             allowed
connected       expired       stopped          stopped         allowed             allowed
connected       deprovisioned stopped          stopped         stopped             stopped
lost > 15 days  active        stopped          stopped (*)     allowed             allowed
lost > 15 days  expired       stopped          stopped         allowed             allowed
lost > 15 days  deprovisioned stopped          stopped         stopped             stopped
==============  ============  ===============  ==============  ==================  =================

(*) ``cloud.lost_stops_disk_backups = false`` relaxes this cell to allowed (an expired or
deprovisioned vault still stops disk backups); the default follows the table, as MABS does.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from storage_pool.vault.header import VaultState

__all__ = [
    "CloudPolicyRefused",
    "CloudStatus",
    "Connectivity",
    "ContactFailure",
    "Decision",
    "Operation",
    "decide",
    "decisions",
]


class Connectivity(enum.StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    LOST = "lost"
    NOT_REGISTERED = "not_registered"


class ContactFailure(enum.StrEnum):
    """Why the last contact with the vault failed, as the operator needs to act on it."""

    DNS = "dns"
    TCP = "tcp"
    TLS = "tls"
    AUTHENTICATION = "authentication"
    NOT_FOUND = "not_found"
    THROTTLED = "throttled"
    TIMEOUT = "timeout"
    SERVER_ERROR = "server_error"
    INTEGRITY = "integrity"
    OTHER = "other"


class Operation(enum.StrEnum):
    BACKUP_TO_CLOUD = "backup_to_cloud"
    BACKUP_TO_DISK = "backup_to_disk"
    RESTORE_FROM_CLOUD = "restore_from_cloud"
    RESTORE_FROM_DISK = "restore_from_disk"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


@dataclass(frozen=True)
class CloudStatus:
    """What the server knows of its vault at one instant (times: the server's clock)."""

    connectivity: Connectivity
    vault_state: VaultState | None  # None: no vault registered
    vault: str | None  # describe(spec): where the vault is, no secrets
    last_success: float | None
    last_failure: float | None
    last_error: str | None
    last_reason: ContactFailure | None
    last_probe: float | None
    checked_at: float  # the clock when this status was computed
    lost_after_seconds: float
    lost_stops_disk_backups: bool = True

    @classmethod
    def unregistered(
        cls, now: float, lost_after_seconds: float, *, lost_stops_disk_backups: bool = True
    ) -> CloudStatus:
        """The status of a server with no vault registered."""
        return cls(
            connectivity=Connectivity.NOT_REGISTERED,
            vault_state=None,
            vault=None,
            last_success=None,
            last_failure=None,
            last_error=None,
            last_reason=None,
            last_probe=None,
            checked_at=now,
            lost_after_seconds=lost_after_seconds,
            lost_stops_disk_backups=lost_stops_disk_backups,
        )

    @property
    def registered(self) -> bool:
        return self.connectivity is not Connectivity.NOT_REGISTERED

    @property
    def connected(self) -> bool:
        """What Get-CloudConnection prints: True only when everything is allowed."""
        return self.connectivity is Connectivity.CONNECTED and self.vault_state is VaultState.ACTIVE

    @property
    def since_contact_seconds(self) -> float | None:
        if self.last_success is None:
            return None
        return max(0.0, self.checked_at - self.last_success)

    def summary(self) -> str:
        """One phrase for job errors and logs: 'connectivity lost, vault expired'."""
        if not self.registered:
            return "no vault registered"
        state = self.vault_state.value if self.vault_state is not None else "unknown"
        return f"connectivity {self.connectivity.value}, vault {state}"

    def to_json(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "connectivity": self.connectivity.value,
            "vault_state": None if self.vault_state is None else self.vault_state.value,
            "vault": self.vault,
            "last_success": self.last_success,
            "last_failure": self.last_failure,
            "last_error": self.last_error,
            "last_reason": None if self.last_reason is None else self.last_reason.value,
            "last_probe": self.last_probe,
            "checked_at": self.checked_at,
            "since_contact_seconds": self.since_contact_seconds,
            "lost_after_seconds": self.lost_after_seconds,
            "operations": {
                op.value: {"allowed": d.allowed, "reason": d.reason}
                for op, d in decisions(self).items()
            },
        }


@dataclass(frozen=True)
class Decision:
    operation: Operation
    allowed: bool
    reason: str  # why, naming connectivity and vault state; "" when allowed normally


class CloudPolicyRefused(Exception):
    """A job kind the cloud policy does not allow now; the message names the states."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__(decision.reason)


def decide(operation: Operation, status: CloudStatus) -> Decision:
    """Whether `operation` may start (or keep running) under `status`."""
    if not status.registered:
        if operation in (Operation.BACKUP_TO_CLOUD, Operation.RESTORE_FROM_CLOUD):
            return Decision(operation, False, f"{operation.label} refused: no vault registered")
        return Decision(operation, True, "")
    allowed = _allowed(operation, status)
    if allowed:
        return Decision(operation, True, "")
    why = f"{operation.label} stopped by the cloud policy: {status.summary()}"
    if status.vault_state is VaultState.DEPROVISIONED:
        why += " (the vault is gone; its online RPs are marked deleted)"
    elif status.connectivity is Connectivity.LOST and status.last_success is not None:
        days = (status.checked_at - status.last_success) / 86400
        why += f" (no successful contact for {days:.1f} days)"
    return Decision(operation, False, why)


def decisions(status: CloudStatus) -> Mapping[Operation, Decision]:
    return {op: decide(op, status) for op in Operation}


def _allowed(operation: Operation, status: CloudStatus) -> bool:
    state = status.vault_state
    if state is VaultState.DEPROVISIONED:
        return False
    lost = status.connectivity is Connectivity.LOST
    if operation is Operation.BACKUP_TO_CLOUD:
        return state is VaultState.ACTIVE and not lost
    if operation is Operation.BACKUP_TO_DISK:
        if state is VaultState.EXPIRED:
            return False
        return not lost or not status.lost_stops_disk_backups
    return True  # restores, from either tier, unless deprovisioned
