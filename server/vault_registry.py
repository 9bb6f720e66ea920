"""Vault registration: New-Vault, Register-Vault, Set-VaultPassphrase, Get-Vault, Unregister-Vault.

One server, one vault. The registration (server/vault_state.py) is the server's only
record of its vault; the vault itself is self-describing (storage_pool/vault/format.py).

New-Vault (`new_vault`) runs on the server with a backend spec: it creates the container
(``ensure_container``), then, if the location already holds a vault header, issues
credentials for that vault; otherwise it writes the public marker ``stockade-vault-init.json``
(create-if-absent, no secret in it) and issues credentials with ``vault_id`` null. The key
material cannot exist yet: it is wrapped by the passphrase, which only Register-Vault gets.
The marker says "a vault was created here on purpose", so Register-Vault refuses to make keys
in a place no New-Vault prepared (a mistyped bucket or folder).

Register-Vault (`register`), in order, nothing written until every check passed:
  1. the credentials file: format, checksum, then expiry by the server's clock;
  2. the passphrase: at least 16 characters (or a generated one);
  3. one server, one vault: a registration for another vault is refused (409);
  4. the header: absent -> the marker must exist; `create_vault` makes the master key and
     the header, stored with ``create_if_absent``. Of two servers racing to key a fresh
     vault exactly one stores its header; the other reads the winner's header and goes on
     as a later registration (its own keys are dropped, never used). Present -> `unlock`
     with the passphrase (a wrong one is refused: nothing registered) and the generation
     high-water mark of this server, if it was registered with this vault before;
  5. the registration file (0600) is written last.

Set-VaultPassphrase (`change_passphrase`): unlock with the stored passphrase, re-wrap
(generation + 1), use the security PIN, then write in this order:
  a. the registration with ``pending_passphrase`` = the new one (old one kept);
  b. the new header, replacing the old one atomically (backend contract);
  c. the registration with the new passphrase only and the new generation.
Interrupted after a, the header is still the old one and the old passphrase opens it;
after b, the old one fails and the pending one opens it and is promoted (`_unlock`). The
vault stays openable at every step. The header put is not conditional: two servers
changing one vault's passphrase at once is outside "one server, one vault".

Unregister-Vault (`unregister`, orchestrated by server/vault_unregister.py): under the lock,
the caller's checks (no job or sync using the vault, then the security PIN), then the
former-vault record and the registration file's removal (server/vault_state.py), then the
listeners are told (with None). The vault itself is not touched. Work that reads the vault
outside a job (a sync) holds `in_use` while it runs, so unregistering waits for nothing and
refuses instead.

Every KDF call (~0.2 s with production parameters) runs in a worker thread. Passphrases are
never logged and never returned, except a generated one, once, by `register`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

from server.vault_backends import describe, open_backend, parse_spec, public_location
from server.vault_credentials import VaultCredentials
from server.vault_state import (
    FormerVault,
    Registration,
    load_former,
    load_registration,
    remove_registration,
    save_registration,
)
from storage_pool.vault.backend import NotFound, VaultBackend
from storage_pool.vault.format import HEADER_NAME
from storage_pool.vault.format_errors import WrongPassphraseError
from storage_pool.vault.header import VaultHeader, create_vault, rewrap, unlock
from storage_pool.vault.keys import (
    KDF_DEFAULT,
    KDF_FLOOR,
    KdfParams,
    VaultKeys,
    generate_passphrase,
    normalize_passphrase,
)

__all__ = [
    "INIT_MARKER_NAME",
    "GeneratePassphraseError",
    "NoVaultAtLocationError",
    "NotRegisteredError",
    "OneVaultError",
    "RegisterOutcome",
    "RegistrationListener",
    "UnlockedVault",
    "VaultInUseError",
    "VaultMismatchError",
    "VaultRegistry",
    "VaultRegistryError",
]

log = structlog.get_logger()

INIT_MARKER_NAME: Final = "stockade-vault-init.json"
INIT_MARKER_FORMAT: Final = "stockade-vault-init"

BackendOpener = Callable[[Mapping[str, Any]], VaultBackend]
# Told of every registration this registry writes, and None when it is removed (the
# connection monitor listens).
RegistrationListener = Callable[[Registration | None], None]


class VaultRegistryError(Exception):
    """Root of the registration errors (the vault format's own errors pass through)."""


class NotRegisteredError(VaultRegistryError):
    def __init__(self) -> None:
        super().__init__("this server is not registered with a vault: run Register-Vault")


class OneVaultError(VaultRegistryError):
    """One server, one vault: the server is registered with another vault."""

    def __init__(self, registered: str, offered: str | None) -> None:
        other = f"vault {offered}" if offered else "a new vault"
        super().__init__(
            f"this server is registered with vault {registered}; one server, one vault:"
            f" it cannot register with {other}"
        )
        self.registered = registered
        self.offered = offered


class NoVaultAtLocationError(VaultRegistryError, ValueError):
    def __init__(self, where: str) -> None:
        super().__init__(
            f"{where} holds no Stockade vault (no header and no New-Vault marker):"
            " check the credentials file or run New-Vault"
        )


class VaultInUseError(VaultRegistryError):
    """The vault is in use by work outside the job table (a sync): try again after it."""

    def __init__(self, what: str) -> None:
        super().__init__(f"the vault is in use ({what}): try again when it has finished")
        self.what = what


class VaultMismatchError(VaultRegistryError, ValueError):
    def __init__(self, expected: str, found: str) -> None:
        super().__init__(
            f"the credentials file is for vault {expected} but its location holds vault {found}"
        )


class GeneratePassphraseError(VaultRegistryError, ValueError):
    def __init__(self, vault_id: str) -> None:
        super().__init__(
            f"vault {vault_id} already has a passphrase: register with -Passphrase;"
            " -GeneratePassphrase is only for a new vault's first registration"
        )


@dataclass(frozen=True, slots=True, repr=False)
class RegisterOutcome:
    registration: Registration
    created_keys: bool
    header: VaultHeader
    generated_passphrase: str | None  # shown once to the operator, never stored elsewhere


@dataclass(frozen=True, slots=True, repr=False)
class UnlockedVault:
    """What the online tier needs: where the vault is and its keys (in memory only)."""

    registration: Registration
    header: VaultHeader
    keys: VaultKeys


def _marker(now: float) -> bytes:
    doc = {"format": INIT_MARKER_FORMAT, "format_version": 1, "created_at": now}
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


class VaultRegistry:
    """The vault operations of one server (one data dir). Safe for concurrent requests:
    changes are serialised by one lock."""

    def __init__(
        self,
        data_dir: Path,
        *,
        clock: Callable[[], float],
        kdf_params: KdfParams = KDF_DEFAULT,
        min_params: KdfParams = KDF_FLOOR,
        opener: BackendOpener = open_backend,
    ) -> None:
        self.data_dir = data_dir
        self._clock = clock
        self._kdf_params = kdf_params
        self._min_params = min_params
        self._opener = opener
        self._lock = asyncio.Lock()
        # Header bytes already unlocked and checked, so Get-Vault does not re-run the KDF.
        self._verified: tuple[bytes, VaultKeys] | None = None
        self._listeners: list[RegistrationListener] = []
        self._users: dict[str, int] = {}

    @property
    def opener(self) -> BackendOpener:
        """How this server opens its vault's backend (vault_sync and restores use it too)."""
        return self._opener

    def use_opener(self, opener: BackendOpener) -> None:
        """Open backends with `opener` from now on (the daemon passes an observed one)."""
        self._opener = opener

    def add_listener(self, listener: RegistrationListener) -> None:
        """Call `listener` (synchronously; it must not raise) after each new registration."""
        self._listeners.append(listener)

    def remove_listener(self, listener: RegistrationListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _tell(self, registration: Registration | None) -> None:
        for listener in list(self._listeners):
            listener(registration)

    @contextlib.contextmanager
    def in_use(self, what: str) -> Iterator[None]:
        """Mark the vault as used by `what` (e.g. "vault sync") while the block runs."""
        self._users[what] = self._users.get(what, 0) + 1
        try:
            yield
        finally:
            left = self._users[what] - 1
            if left:
                self._users[what] = left
            else:
                del self._users[what]

    def users(self) -> list[str]:
        """What holds `in_use` now."""
        return sorted(self._users)

    # ------------------------------------------------------------------ helpers

    @contextlib.asynccontextmanager
    async def _backend(self, spec: Mapping[str, Any]) -> AsyncIterator[VaultBackend]:
        backend = self._opener(spec)
        try:
            yield backend
        finally:
            await backend.close()

    async def registration(self) -> Registration | None:
        return await asyncio.to_thread(load_registration, self.data_dir)

    async def _registered(self) -> Registration:
        reg = await self.registration()
        if reg is None:
            raise NotRegisteredError()
        return reg

    @staticmethod
    async def _registered_header(
        backend: VaultBackend, reg: Registration
    ) -> tuple[bytes, VaultHeader]:
        """The header's bytes and parsed form; VaultMismatchError if another vault now
        lives at the registered location."""
        raw = await backend.get(HEADER_NAME)
        header = VaultHeader.from_json(raw)
        if header.vault_id_hex != reg.vault_id:
            raise VaultMismatchError(reg.vault_id, header.vault_id_hex)
        return raw, header

    async def _save(self, registration: Registration) -> None:
        await asyncio.to_thread(save_registration, self.data_dir, registration)

    @staticmethod
    async def _read_header(backend: VaultBackend) -> bytes | None:
        try:
            return await backend.get(HEADER_NAME)
        except NotFound:
            return None

    async def _unlock(
        self, header: VaultHeader, raw: bytes, reg: Registration
    ) -> tuple[VaultKeys, Registration]:
        """Keys from the stored passphrase (or a pending one, then promoted); the
        registration with its generation high-water mark brought up to the header's."""
        if self._verified is not None and self._verified[0] == raw:
            keys = self._verified[1]
        else:
            try:
                keys = await asyncio.to_thread(
                    unlock,
                    header,
                    reg.passphrase,
                    min_params=self._min_params,
                    min_generation=reg.header_generation,
                )
            except WrongPassphraseError:
                if reg.pending_passphrase is None:
                    raise
                # A passphrase change stopped after writing the header (step b): finish it.
                keys = await asyncio.to_thread(
                    unlock,
                    header,
                    reg.pending_passphrase,
                    min_params=self._min_params,
                    min_generation=reg.header_generation,
                )
                reg = reg.with_changes(passphrase=reg.pending_passphrase, pending_passphrase=None)
                await self._save(reg)
                log.info("vault_passphrase_change_completed", vault_id=reg.vault_id)
            self._verified = (raw, keys)
        if reg.pending_passphrase is not None:
            # Stopped before the header was written (step a): the old passphrase stands.
            reg = reg.with_changes(pending_passphrase=None)
            await self._save(reg)
        if header.generation > reg.header_generation:
            reg = reg.with_changes(header_generation=header.generation)
            await self._save(reg)
        return keys, reg

    # ------------------------------------------------------------------ New-Vault

    async def new_vault(self, backend_doc: Any) -> VaultCredentials:
        """Create the container (and marker) for `backend_doc`; credentials valid 48 h."""
        spec = parse_spec(backend_doc)
        now = self._clock()
        async with self._backend(spec) as backend:
            await backend.ensure_container()
            raw = await self._read_header(backend)
            vault_id: str | None = None
            if raw is not None:
                vault_id = VaultHeader.from_json(raw).vault_id_hex
            else:
                await backend.create_if_absent(INIT_MARKER_NAME, _marker(now))
        credentials = VaultCredentials.issue(spec, vault_id, now)
        log.info(
            "vault_credentials_issued",
            credentials_id=credentials.credentials_id,
            vault_id=vault_id,
            location=describe(spec),
            expires_at=credentials.expires_at,
        )
        return credentials

    # ------------------------------------------------------------------ Register-Vault

    async def _seen_generation(self, current: Registration | None, vault_id: str) -> int:
        """The highest header generation this server saw of `vault_id`, registered now or
        before an Unregister-Vault: an older header is a rollback."""
        if current is not None:
            return current.header_generation
        former = await asyncio.to_thread(load_former, self.data_dir)
        return former.header_generation if former is not None and former.vault_id == vault_id else 0

    async def register(
        self, credentials_doc: Any, passphrase: str | None, *, generate: bool = False
    ) -> RegisterOutcome:
        credentials = VaultCredentials.from_doc(credentials_doc)
        now = self._clock()
        credentials.check_fresh(now)
        if generate == (passphrase is not None):
            raise ValueError("give exactly one of a passphrase or generate_passphrase")
        secret = generate_passphrase() if generate else passphrase
        assert secret is not None
        normalize_passphrase(secret)  # PassphraseTooShortError before any I/O
        spec = credentials.backend
        where = describe(spec)
        async with self._lock:
            current = await self.registration()
            if current is not None and credentials.vault_id not in (None, current.vault_id):
                raise OneVaultError(current.vault_id, credentials.vault_id)
            async with self._backend(spec) as backend:
                raw = await self._read_header(backend)
                created = False
                keys: VaultKeys | None = None
                if raw is None:
                    if current is not None:
                        raise OneVaultError(current.vault_id, None)
                    if await backend.head(INIT_MARKER_NAME) is None:
                        raise NoVaultAtLocationError(where)
                    new_header, new_keys = await asyncio.to_thread(
                        create_vault,
                        secret,
                        now_ns=int(now * 1e9),
                        params=self._kdf_params,
                        min_params=self._min_params,
                    )
                    data = new_header.to_json()
                    created = await backend.create_if_absent(HEADER_NAME, data)
                    raw = data if created else await backend.get(HEADER_NAME)
                    # A retried create_if_absent may say False for our own header.
                    created = created or raw == data
                    if created:
                        keys = new_keys
                    else:
                        log.info("vault_keyed_by_another_server", location=where)
                header = VaultHeader.from_json(raw)
                vault_id = header.vault_id_hex
                if current is not None and current.vault_id != vault_id:
                    raise OneVaultError(current.vault_id, vault_id)
                if credentials.vault_id is not None and credentials.vault_id != vault_id:
                    raise VaultMismatchError(credentials.vault_id, vault_id)
                seen = await self._seen_generation(current, vault_id)
                if keys is None:
                    if generate:
                        raise GeneratePassphraseError(vault_id)
                    keys = await asyncio.to_thread(
                        unlock,
                        header,
                        secret,
                        min_params=self._min_params,
                        min_generation=seen,
                    )
            registration = Registration(
                vault_id=vault_id,
                backend=spec,
                passphrase=secret,
                header_generation=max(header.generation, seen),
                registered_at=now,
                credentials_id=credentials.credentials_id,
                credentials_expires_at=credentials.expires_at,
                created_keys=created,
            )
            await self._save(registration)
            self._verified = (raw, keys)
        self._tell(registration)
        log.info(
            "vault_registered",
            vault_id=vault_id,
            location=where,
            created_keys=created,
            credentials_id=credentials.credentials_id,
            generated_passphrase=generate,
        )
        return RegisterOutcome(registration, created, header, secret if generate else None)

    # ------------------------------------------------------------------ Set-VaultPassphrase

    async def change_passphrase(
        self, new_passphrase: str, use_pin: Callable[[], Awaitable[None]]
    ) -> VaultHeader:
        """Re-wrap the master key under `new_passphrase`; `use_pin` is awaited after every
        check and before the first write. Returns the new header."""
        normalize_passphrase(new_passphrase)
        async with self._lock:
            reg = await self._registered()
            async with self._backend(reg.backend) as backend:
                raw, header = await self._registered_header(backend, reg)
                _, reg = await self._unlock(header, raw, reg)
                new_header = await asyncio.to_thread(
                    rewrap, header, reg.passphrase, new_passphrase, min_params=self._min_params
                )
                await use_pin()
                data = new_header.to_json()
                await self._save(reg.with_changes(pending_passphrase=new_passphrase))
                await backend.put(HEADER_NAME, data, sha256=hashlib.sha256(data).digest())
                await self._save(
                    reg.with_changes(
                        passphrase=new_passphrase,
                        pending_passphrase=None,
                        header_generation=new_header.generation,
                    )
                )
                # Same master key: the cached keys stay valid for the new header bytes.
                if self._verified is not None:
                    self._verified = (data, self._verified[1])
        log.info(
            "vault_passphrase_changed", vault_id=reg.vault_id, generation=new_header.generation
        )
        return new_header

    # ------------------------------------------------------------------ Unregister-Vault

    async def unregister(self, check: Callable[[Registration], Awaitable[None]]) -> Registration:
        """Forget the registered vault (module docstring): `check` is awaited under the lock
        with the registration and refuses by raising; nothing changed then. Returns the
        registration that was removed. The vault is not touched."""
        async with self._lock:
            reg = await self._registered()
            users = self.users()
            if users:
                raise VaultInUseError(", ".join(users))
            await check(reg)
            former = FormerVault(reg.vault_id, reg.header_generation, self._clock())
            await asyncio.to_thread(remove_registration, self.data_dir, former)
            self._verified = None
        self._tell(None)
        log.info("vault_unregistered", vault_id=reg.vault_id, location=describe(reg.backend))
        return reg

    async def former(self) -> FormerVault | None:
        """The vault this server was last unregistered from (no secret), or None."""
        return await asyncio.to_thread(load_former, self.data_dir)

    # ------------------------------------------------------------------ Get-Vault, online tier

    async def unlocked(self) -> UnlockedVault:
        """The registered vault's header and keys (for the online tier)."""
        async with self._lock:
            reg = await self._registered()
            async with self._backend(reg.backend) as backend:
                raw, header = await self._registered_header(backend, reg)
            keys, reg = await self._unlock(header, raw, reg)
        return UnlockedVault(reg, header, keys)

    async def verify_header(self, raw: bytes) -> UnlockedVault:
        """Check header bytes read from the registered vault (a connection probe read them):
        structure, vault id, MAC and generation, with the keys already unlocked for these
        bytes when there are (no KDF run per probe). HeaderError, VaultMismatchError,
        HeaderTamperedError, RollbackError or WrongPassphraseError when they fail."""
        async with self._lock:
            reg = await self._registered()
            header = VaultHeader.from_json(raw)
            if header.vault_id_hex != reg.vault_id:
                raise VaultMismatchError(reg.vault_id, header.vault_id_hex)
            keys, reg = await self._unlock(header, raw, reg)
        return UnlockedVault(reg, header, keys)

    async def status(self) -> dict[str, Any]:
        """Get-Vault's document: never a secret. A vault that cannot be read right now
        shows state "unknown" and the reason."""
        reg = await self.registration()
        doc: dict[str, Any] = {
            "registered": reg is not None,
            "vault_id": None,
            "location": None,
            "description": None,
            "state": None,
            "header_generation": None,
            "kdf": None,
            "registered_at": None,
            "created_keys": None,
            "credentials_id": None,
            "credentials_expires_at": None,
            # Filled in by the online tier; present so scripts can rely on the fields.
            "online_recovery_points": 0,
            "online_data_sources": 0,
            "stored_bytes": None,
            "error": None,
        }
        if reg is None:
            return doc
        doc.update(
            vault_id=reg.vault_id,
            location=public_location(reg.backend),
            description=describe(reg.backend),
            header_generation=reg.header_generation,
            registered_at=reg.registered_at,
            created_keys=reg.created_keys,
            credentials_id=reg.credentials_id,
            credentials_expires_at=reg.credentials_expires_at,
        )
        try:
            vault = await self.unlocked()
        except Exception as err:  # the document still answers; the reason is shown
            log.warning("vault_status_unreadable", vault_id=reg.vault_id, error=str(err))
            doc.update(state="unknown", error=f"{type(err).__name__}: {err}")
            return doc
        doc.update(
            state=vault.header.state.value,
            header_generation=vault.header.generation,
            kdf=vault.header.kdf.describe(),
        )
        return doc
