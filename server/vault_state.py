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

Unregister-Vault removes the registration file (the passphrase and the storage credentials
go with it) after writing ``<data_dir>/vault/former.json`` (0600, no secret in it)::

    {"format": "stockade-vault-former", "format_version": 1,
     "vault_id": "<32 hex>", "header_generation": int, "unregistered_at": <unix s>}

so a later registration with the same vault still refuses a header older than the one this
server last saw, and listings can name the vault the catalog's online RPs are in.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from server.tls import write_file_atomic

__all__ = [
    "FormerVault",
    "Registration",
    "RegistrationFileError",
    "load_former",
    "load_registration",
    "registration_path",
    "remove_registration",
    "save_registration",
]

STATE_FORMAT: Final = "stockade-vault-registration"
STATE_VERSION: Final = 1
FORMER_FORMAT: Final = "stockade-vault-former"


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


@dataclass(frozen=True, slots=True)
class FormerVault:
    """What the server keeps of a vault it was unregistered from: no secret."""

    vault_id: str
    header_generation: int
    unregistered_at: float


def _former_path(data_dir: Path) -> Path:
    return data_dir / "vault" / "former.json"


def load_former(data_dir: Path) -> FormerVault | None:
    """The last vault this server was unregistered from, or None. A damaged file counts as
    none: it only raises a floor, and losing the floor is what a fresh server has. Blocking."""
    try:
        doc = json.loads(_former_path(data_dir).read_bytes())
        if doc.get("format") != FORMER_FORMAT or doc.get("format_version") != STATE_VERSION:
            return None
        return FormerVault(
            str(doc["vault_id"]), int(doc["header_generation"]), float(doc["unregistered_at"])
        )
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def remove_registration(data_dir: Path, former: FormerVault) -> None:
    """Write `former`, then delete the registration file and make the deletion durable.
    Blocking. Interrupted between the two, the server is still registered (the former
    record is harmless)."""
    doc = {"format": FORMER_FORMAT, "format_version": STATE_VERSION, **asdict(former)}
    path = registration_path(data_dir)
    write_file_atomic(
        _former_path(data_dir), (json.dumps(doc, sort_keys=True) + "\n").encode(), mode=0o600
    )
    path.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
