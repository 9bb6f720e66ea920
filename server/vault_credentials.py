"""The vault credentials file: what New-Vault hands the operator and Register-Vault takes.

JSON, written 0600 by the CLI (it holds the storage credentials)::

    {"format": "stockade-vault-credentials", "format_version": 1,
     "credentials_id": "<32 hex>",            random, names this file in logs and Get-Vault
     "vault_id": "<32 hex>" | null,           null until the first Register-Vault made keys
     "backend": {<backend spec, server/vault_backends.py>},
     "created_at": <unix s>, "expires_at": <created_at + 48 h>,
     "checksum": {"alg": "sha256", "value": "<64 hex>"}}

The checksum is SHA-256 over the canonical JSON of every other field. It is not a MAC:
whoever holds the file already holds the storage credentials, and a fresh server recovering
a lost host has no secret in common with the server that wrote it. It makes a hand-edited
or damaged file (a changed expiry, a truncated key) fail with a clear message instead of
registering against the wrong place. The data stays protected by the passphrase.

Expiry is checked by the registering server's clock; an expired file is refused whatever
it holds: run New-Vault again (for an existing vault it writes a new file for it).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from server.vault_backends import BackendSpecError, parse_spec

__all__ = [
    "CREDENTIALS_TTL_SECONDS",
    "CredentialsError",
    "CredentialsExpiredError",
    "VaultCredentials",
]

CREDENTIALS_FORMAT: Final = "stockade-vault-credentials"
CREDENTIALS_VERSION: Final = 1
CREDENTIALS_TTL_SECONDS: Final = 48 * 3600.0
_BODY_FIELDS: Final = frozenset(
    {
        "format",
        "format_version",
        "credentials_id",
        "vault_id",
        "backend",
        "created_at",
        "expires_at",
    }
)


class CredentialsError(ValueError):
    """The credentials file is not one, is damaged or was edited by hand."""


class CredentialsExpiredError(CredentialsError):
    def __init__(self, expires_at: float) -> None:
        super().__init__(
            f"vault credentials file expired at {iso(expires_at)}: create a new one with New-Vault"
        )
        self.expires_at = expires_at


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class VaultCredentials:
    credentials_id: str
    vault_id: str | None
    backend: dict[str, Any]
    created_at: float
    expires_at: float

    @classmethod
    def issue(cls, backend: dict[str, Any], vault_id: str | None, now: float) -> VaultCredentials:
        return cls(
            credentials_id=secrets.token_hex(16),
            vault_id=vault_id,
            backend=parse_spec(backend),
            created_at=now,
            expires_at=now + CREDENTIALS_TTL_SECONDS,
        )

    def _body(self) -> dict[str, Any]:
        return {
            "format": CREDENTIALS_FORMAT,
            "format_version": CREDENTIALS_VERSION,
            "credentials_id": self.credentials_id,
            "vault_id": self.vault_id,
            "backend": self.backend,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }

    def to_doc(self) -> dict[str, Any]:
        body = self._body()
        body["checksum"] = {"alg": "sha256", "value": hashlib.sha256(_canonical(body)).hexdigest()}
        return body

    def check_fresh(self, now: float) -> None:
        if now >= self.expires_at:
            raise CredentialsExpiredError(self.expires_at)

    @classmethod
    def from_doc(cls, doc: Any) -> VaultCredentials:
        """Parse and verify (structure and checksum, not expiry: see `check_fresh`)."""
        if not isinstance(doc, dict) or doc.get("format") != CREDENTIALS_FORMAT:
            raise CredentialsError("this is not a Stockade vault credentials file")
        if doc.get("format_version") != CREDENTIALS_VERSION:
            raise CredentialsError(
                f"vault credentials format version {doc.get('format_version')!r} is not"
                f" supported (this Stockade reads {CREDENTIALS_VERSION})"
            )
        checksum = doc.get("checksum")
        body = {k: v for k, v in doc.items() if k != "checksum"}
        if set(body) != _BODY_FIELDS or not isinstance(checksum, dict):
            raise CredentialsError(
                "vault credentials file is incomplete or has unknown fields: it was edited"
                " or damaged; create a new one with New-Vault"
            )
        expected = hashlib.sha256(_canonical(body)).hexdigest()
        if checksum.get("alg") != "sha256" or checksum.get("value") != expected:
            raise CredentialsError(
                "vault credentials file does not match its checksum: it was edited or"
                " damaged; create a new one with New-Vault"
            )
        try:
            creds = cls(
                credentials_id=_hex(body["credentials_id"], "credentials_id"),
                vault_id=None if body["vault_id"] is None else _hex(body["vault_id"], "vault_id"),
                backend=parse_spec(body["backend"]),
                created_at=_time(body["created_at"], "created_at"),
                expires_at=_time(body["expires_at"], "expires_at"),
            )
        except BackendSpecError as err:
            raise CredentialsError(f"vault credentials file: {err}") from err
        if creds.expires_at > creds.created_at + CREDENTIALS_TTL_SECONDS:
            raise CredentialsError("vault credentials file claims to be valid beyond 48 hours")
        return creds


def _hex(value: Any, field: str) -> str:
    if (
        not isinstance(value, str)
        or len(value) != 32
        or not all(c in "0123456789abcdef" for c in value)
    ):
        raise CredentialsError(f"vault credentials file: {field} must be 32 lower-case hex digits")
    return value


def _time(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CredentialsError(f"vault credentials file: {field} must be a number")
    return float(value)
