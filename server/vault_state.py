"""The server's vault registration: what it needs to use its vault unattended.

``<data_dir>/vault/registration.json``, mode 0600 in a 0700 directory, replaced atomically
(`server.tls.write_file_atomic`)::

    {"format": "stockade-vault-registration", "format_version": 1,
     "vault_id": "<32 hex>", "backend": {<backend spec with its credentials>},
     "passphrase": "...", "pending_passphrase": "..." | null,
     "header_generation": int, "registered_at": <unix s>,
     "credentials_id": "<32 hex>", "credentials_expires_at": <unix s>,
     "created_keys": bool}

Choice: the server keeps the passphrase, not the unwrapped master key. Scheduled online
backups must run unattended, so one of the two must be on the host; the passphrase is what
`header.rewrap` needs for Set-VaultPassphrase, and unlocking from it re-checks the header
(MAC, generation) at each start. Both are equally powerful; neither ever leaves the
backup host (DESIGN.md invariant 9): the file is root-only, never logged, never served.

``pending_passphrase`` is set only between the two steps of a passphrase change (see
`server.vault_registry` for the write order); `header_generation` is the highest header
generation this server has seen, passed to `unlock` as ``min_generation`` so an older
header restored into the vault is refused as a rollback.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from server.tls import write_file_atomic

__all__ = [
    "Registration",
    "RegistrationFileError",
    "load_registration",
    "registration_path",
    "save_registration",
]

STATE_FORMAT: Final = "stockade-vault-registration"
STATE_VERSION: Final = 1


class RegistrationFileError(Exception):
    """The registration file exists but cannot be used (damaged, newer format)."""


@dataclass(frozen=True, slots=True, repr=False)
class Registration:
    vault_id: str
    backend: dict[str, Any]
    passphrase: str
    header_generation: int
    registered_at: float
    credentials_id: str
    credentials_expires_at: float
    created_keys: bool
    pending_passphrase: str | None = None

    def __repr__(self) -> str:  # never show the passphrase or the storage credentials
        return f"Registration(vault_id={self.vault_id}, <secrets hidden>)"

    def with_changes(self, **changes: Any) -> Registration:
        return replace(self, **changes)

    def to_json(self) -> bytes:
        doc = {"format": STATE_FORMAT, "format_version": STATE_VERSION, **asdict(self)}
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def registration_path(data_dir: Path) -> Path:
    return data_dir / "vault" / "registration.json"


def load_registration(data_dir: Path) -> Registration | None:
    """The registration, or None if this server has none. Blocking."""
    path = registration_path(data_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
        if doc.get("format") != STATE_FORMAT or doc.get("format_version") != STATE_VERSION:
            raise RegistrationFileError(f"{path} is not a version {STATE_VERSION} registration")
        fields = {k: v for k, v in doc.items() if k not in {"format", "format_version"}}
        return Registration(**fields)
    except (ValueError, TypeError, AttributeError) as err:
        raise RegistrationFileError(f"{path} cannot be read: {err}") from err


def save_registration(data_dir: Path, registration: Registration) -> None:
    """Replace the registration file atomically (0600). Blocking."""
    path = registration_path(data_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    write_file_atomic(path, registration.to_json(), mode=0o600)
