"""What the connection monitor remembers of its vault, and how it reads a failed contact.

Pure code (no I/O, no clock): server/cloud_health.py feeds `HealthRecord` the outcome of
every probe and every observed vault operation, persists it, and computes `CloudStatus`
from it.

Classification (`classify`): a `Throttled` answer is ``throttled``; a `TransientError` by
its ``kind`` (dns -> dns, connect and reset -> tcp, tls -> tls, timeout -> timeout,
server_error -> server_error); `AuthError` -> authentication; `ContainerGone` and
`NotFound` -> not_found; a checksum mismatch or a vault header that fails its checks
(structure, MAC, generation, another vault at the place, a passphrase that no longer opens
it) -> integrity; anything else -> other.

Vault state from what the cloud says:

- ``expired``: the credential was rejected (`AuthError`) on ``limit`` consecutive contacts
  with no successful one in between, or the header (MAC-protected) says expired;
- ``deprovisioned``: the container is gone (`ContainerGone`), or the container answers
  but the vault header is missing, on ``limit`` consecutive contacts; or the header says
  deprovisioned. Choice: a missing header counts as gone, because no key can open
  anything in that vault any more; its online RPs are as lost as with the container;
- ``active`` again at the first successful contact when the state came from rejections
  (a header state changes only by reading another header). A transient failure, a
  throttled answer or an integrity failure never changes the state and does not break a
  run of rejections.

Operations running in parallel fail together (one expired SAS fails every upload of a job
at once), so operations count as at most one rejection between two probes: with the
default limit of 2 a state change needs a rejection confirmed by a probe (or two probes).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, fields
from typing import Any, Final

from server.cloud_status import Connectivity, ContactFailure
from server.vault_registry import VaultMismatchError
from storage_pool.errors import IntegrityError as PoolIntegrityError
from storage_pool.vault.backend import (
    AuthError,
    ContainerGone,
    IntegrityError,
    NotFound,
    Throttled,
    TransientError,
)
from storage_pool.vault.format_errors import VaultFormatError
from storage_pool.vault.header import VaultState

__all__ = [
    "RECORD_VERSION",
    "HealthRecord",
    "Rejection",
    "Source",
    "classify",
    "connectivity_of",
    "redact",
    "rejection_of",
]

RECORD_VERSION: Final = 1
_MAX_ERROR_CHARS: Final = 500
_TRANSIENT: Final[dict[str, ContactFailure]] = {
    "dns": ContactFailure.DNS,
    "connect": ContactFailure.TCP,
    "reset": ContactFailure.TCP,
    "tls": ContactFailure.TLS,
    "timeout": ContactFailure.TIMEOUT,
    "server_error": ContactFailure.SERVER_ERROR,
}
# SAS signatures, account keys and S3 secrets that an SDK message might echo.
_SECRET_PARAM: Final = re.compile(
    r"(?i)\b(sig|accountkey|x-amz-signature|x-amz-credential|x-amz-security-token)=[^&;\s\"']+"
)


class Rejection(enum.StrEnum):
    """A contact the cloud refused for good, and the state a run of them leads to."""

    AUTHENTICATION = "authentication"
    GONE = "gone"

    @property
    def state(self) -> VaultState:
        return VaultState.EXPIRED if self is Rejection.AUTHENTICATION else VaultState.DEPROVISIONED


class Source(enum.StrEnum):
    PROBE = "probe"
    OPERATION = "operation"
    REGISTRATION = "registration"  # Register-Vault reached the vault


def classify(exc: BaseException) -> ContactFailure:
    if isinstance(exc, Throttled):
        return ContactFailure.THROTTLED
    if isinstance(exc, TransientError):
        return _TRANSIENT.get(exc.kind, ContactFailure.OTHER)
    if isinstance(exc, AuthError):
        return ContactFailure.AUTHENTICATION
    if isinstance(exc, ContainerGone | NotFound):
        return ContactFailure.NOT_FOUND
    if isinstance(exc, IntegrityError | PoolIntegrityError | VaultFormatError | VaultMismatchError):
        return ContactFailure.INTEGRITY
    if isinstance(exc, TimeoutError):
        return ContactFailure.TIMEOUT
    if isinstance(exc, ConnectionError):
        return ContactFailure.TCP
    return ContactFailure.OTHER


def rejection_of(exc: BaseException, *, header_read: bool = False) -> Rejection | None:
    """The rejection `exc` is, if any; `header_read`: it answered a read of the header."""
    if isinstance(exc, AuthError):
        return Rejection.AUTHENTICATION
    if isinstance(exc, ContainerGone) or (header_read and isinstance(exc, NotFound)):
        return Rejection.GONE
    return None


def redact(text: str) -> str:
    """`text` without credentials an SDK may quote, cut to a log-friendly length."""
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}=<hidden>", text)[:_MAX_ERROR_CHARS]


def connectivity_of(record: HealthRecord, now: float, lost_after_seconds: float) -> Connectivity:
    """Connectivity of a registered vault (cloud_status.py defines the three values)."""
    if record.last_success is None or now - record.last_success > lost_after_seconds:
        return Connectivity.LOST
    return Connectivity.CONNECTED if record.last_attempt_ok else Connectivity.DISCONNECTED


@dataclass(slots=True)
class HealthRecord:
    """The monitor's memory of one vault (persisted as `to_json`; times: the server clock)."""

    vault_id: str | None = None
    registered_at: float | None = None
    last_success: float | None = None
    last_failure: float | None = None
    last_error: str | None = None
    last_reason: ContactFailure | None = None
    last_attempt_ok: bool = True
    last_probe: float | None = None
    last_probe_ok: bool | None = None
    vault_state: VaultState = VaultState.ACTIVE
    state_cause: str | None = None  # "header" or a Rejection value; None when active
    rejections: int = 0
    rejection_kind: Rejection | None = None
    # Whether an operation already counted a rejection since the last probe (not persisted).
    operation_counted: bool = field(default=False, compare=False)

    @classmethod
    def for_registration(cls, vault_id: str, registered_at: float) -> HealthRecord:
        """A fresh registration: it proved contact when it was made."""
        return cls(vault_id=vault_id, registered_at=registered_at, last_success=registered_at)

    def contact(self, now: float, source: Source) -> None:
        """The cloud answered normally."""
        self.last_success = now if self.last_success is None else max(self.last_success, now)
        self.last_attempt_ok = True
        self.rejections, self.rejection_kind, self.operation_counted = 0, None, False
        if self.state_cause in (Rejection.AUTHENTICATION, Rejection.GONE):
            self.vault_state, self.state_cause = VaultState.ACTIVE, None
        if source is Source.PROBE:
            self.last_probe, self.last_probe_ok = now, True

    def header_says(self, state: VaultState) -> None:
        """The vault header (authenticated) was read and names `state`."""
        if state is not VaultState.ACTIVE:
            self.vault_state, self.state_cause = state, "header"
        elif self.state_cause == "header":
            self.vault_state, self.state_cause = VaultState.ACTIVE, None

    def failure(
        self,
        now: float,
        reason: ContactFailure,
        error: str,
        source: Source,
        *,
        rejection: Rejection | None,
        limit: int,
    ) -> None:
        """A contact failed; `rejection` when the cloud refused it (module docstring)."""
        self.last_failure = now
        self.last_error = redact(error)
        self.last_reason = reason
        self.last_attempt_ok = False
        if source is Source.PROBE:
            self.last_probe, self.last_probe_ok = now, False
        if rejection is None:
            return
        if self.rejection_kind is not rejection:
            self.rejections, self.rejection_kind, self.operation_counted = 0, rejection, False
        if source is Source.OPERATION:
            if self.operation_counted:
                return
            self.operation_counted = True
        else:
            self.operation_counted = False
        self.rejections += 1
        if self.rejections < limit:
            return
        if self.vault_state is VaultState.DEPROVISIONED and rejection.state is VaultState.EXPIRED:
            return  # a rejected key says nothing about a vault already gone
        self.vault_state, self.state_cause = rejection.state, rejection.value

    # -- persisted form ------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": RECORD_VERSION,
            "vault_id": self.vault_id,
            "registered_at": self.registered_at,
            "last_success": self.last_success,
            "last_failure": self.last_failure,
            "last_error": self.last_error,
            "last_reason": None if self.last_reason is None else self.last_reason.value,
            "last_attempt_ok": self.last_attempt_ok,
            "last_probe": self.last_probe,
            "last_probe_ok": self.last_probe_ok,
            "vault_state": self.vault_state.value,
            "state_cause": self.state_cause,
            "rejections": self.rejections,
            "rejection_kind": None if self.rejection_kind is None else self.rejection_kind.value,
        }

    @classmethod
    def from_json(cls, doc: Any) -> HealthRecord:
        """The record `doc` describes; ValueError if it is not one this code wrote."""
        if not isinstance(doc, dict) or doc.get("format_version") != RECORD_VERSION:
            raise ValueError(f"not a version {RECORD_VERSION} cloud health record")
        known = {f.name for f in fields(cls)} - {"operation_counted"}
        values = {k: v for k, v in doc.items() if k in known}
        try:
            record = cls(**values)
            record.vault_state = VaultState(doc.get("vault_state", "active"))
            reason = doc.get("last_reason")
            record.last_reason = None if reason is None else ContactFailure(reason)
            kind = doc.get("rejection_kind")
            record.rejection_kind = None if kind is None else Rejection(kind)
        except TypeError as err:
            raise ValueError(f"cloud health record: {err}") from err
        if type(record.rejections) is not int or record.rejections < 0:
            raise ValueError("cloud health record: rejections must be a non-negative integer")
        return record
