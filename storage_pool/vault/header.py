"""The vault header: the one object at a fixed name, read before anything else.

`stockade-vault.json` is plain JSON (a fresh server must read the KDF parameters before
it has a key)::

    {"format": "stockade-vault", "format_version": 1,
     "vault_id": "<32 hex>", "created_ns": int, "generation": int,
     "state": "active" | "expired" | "deprovisioned",
     "kdf": {"name": "argon2id", "memory_kib": int, "iterations": int, "lanes": int,
             "salt": "<base64, 16 bytes>"},
     "master_key": {"alg": "aes-256-gcm", "nonce": "<base64>", "wrapped": "<base64>"},
     "mac": {"alg": "hmac-sha256", "value": "<64 hex>"}}

The master key is wrapped by the Argon2id key of the passphrase with associated data
binding the format, its version, the vault id and the whole `kdf` object (salt
included): changing any of them makes the unwrap fail. The header MAC (header subkey,
over the canonical JSON of every other field) covers the rest, `state` and
`generation` included. Choice: the state is plain but writable only with the vault key,
because "deprovisioned" deletes online RPs and a cloud-side writer must not be able to
trigger that; a header whose MAC fails is refused as a whole.

Opening checks, in order: structure; KDF parameters against the floor (`min_params`,
before any CPU is spent, so a hostile header cannot downgrade or exhaust the server);
the unwrap (`WrongPassphraseError`, which cannot tell a wrong passphrase from altered
key fields); the MAC (`HeaderTamperedError`); `generation` against the caller's
high-water mark (`RollbackError`). Every rewrite (re-wrap, state change) increments
`generation` and writes a fresh salt or keeps it, never the master key.

All functions block for the Argon2id derivation (~0.1-0.2 s): run them in an executor.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, replace
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage_pool.vault.format import FORMAT_VERSION, HEADER_NAME
from storage_pool.vault.format_errors import (
    HeaderError,
    HeaderTamperedError,
    RollbackError,
    WrongPassphraseError,
)
from storage_pool.vault.keys import (
    KDF_DEFAULT,
    KDF_FLOOR,
    KDF_NAME,
    KEY_LEN,
    SALT_LEN,
    KdfParams,
    VaultKeys,
    derive_kek,
    normalize_passphrase,
)

FORMAT_NAME = "stockade-vault"
VAULT_ID_LEN = 16
MAX_HEADER_BYTES = 64 * 1024
_NONCE_LEN = 12


class VaultState(enum.StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    DEPROVISIONED = "deprovisioned"


@dataclass(frozen=True, slots=True)
class VaultHeader:
    vault_id: bytes
    created_ns: int
    generation: int
    state: VaultState
    kdf: KdfParams
    salt: bytes
    wrap_nonce: bytes
    wrapped_key: bytes
    mac: bytes
    format_version: int = FORMAT_VERSION

    @property
    def vault_id_hex(self) -> str:
        return self.vault_id.hex()

    def _kdf_doc(self) -> dict[str, Any]:
        return {"name": KDF_NAME, **self.kdf.as_dict(), "salt": _b64(self.salt)}

    def _wrap_ad(self) -> bytes:
        return _canonical(
            {
                "format": FORMAT_NAME,
                "format_version": self.format_version,
                "vault_id": self.vault_id_hex,
                "kdf": self._kdf_doc(),
            }
        )

    def _body(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "vault_id": self.vault_id_hex,
            "created_ns": self.created_ns,
            "generation": self.generation,
            "state": self.state.value,
            "kdf": self._kdf_doc(),
            "master_key": {
                "alg": "aes-256-gcm",
                "nonce": _b64(self.wrap_nonce),
                "wrapped": _b64(self.wrapped_key),
            },
        }

    def _expected_mac(self, keys: VaultKeys) -> bytes:
        return hmac.new(keys.header_key, _canonical(self._body()), hashlib.sha256).digest()

    def to_json(self) -> bytes:
        doc = self._body()
        doc["mac"] = {"alg": "hmac-sha256", "value": self.mac.hex()}
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes) -> VaultHeader:
        """Parse and check the structure (not the keys: see `unlock`)."""
        if len(raw) > MAX_HEADER_BYTES:
            raise HeaderError(f"{len(raw)} bytes, more than a header can be")
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise HeaderError(f"not JSON ({err})") from err
        try:
            return cls._from_doc(doc)
        except (KeyError, TypeError, ValueError, binascii.Error) as err:
            raise HeaderError(f"malformed: {err!r}") from err

    @classmethod
    def _from_doc(cls, doc: Any) -> VaultHeader:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise HeaderError(f"{HEADER_NAME} is not a Stockade vault header")
        version = doc["format_version"]
        if type(version) is not int:
            raise HeaderError("format_version must be an integer")
        if version != FORMAT_VERSION:
            raise HeaderError(
                f"format version {version} is not supported (this Stockade reads"
                f" {FORMAT_VERSION}); upgrade Stockade"
            )
        kdf_doc = doc["kdf"]
        if not isinstance(kdf_doc, dict) or kdf_doc.get("name") != KDF_NAME:
            raise HeaderError(f"unknown KDF {kdf_doc!r:.60}; only {KDF_NAME} is supported")
        wrapped = doc["master_key"]
        if not isinstance(wrapped, dict) or wrapped.get("alg") != "aes-256-gcm":
            raise HeaderError("master_key must be wrapped with aes-256-gcm")
        mac = doc["mac"]
        if not isinstance(mac, dict) or mac.get("alg") != "hmac-sha256":
            raise HeaderError("mac must be hmac-sha256")
        header = cls(
            vault_id=_exact(bytes.fromhex(doc["vault_id"]), VAULT_ID_LEN, "vault_id"),
            created_ns=_nonneg(doc["created_ns"], "created_ns"),
            generation=_nonneg(doc["generation"], "generation"),
            state=VaultState(doc["state"]),
            kdf=KdfParams.from_dict(kdf_doc),
            salt=_exact(_unb64(kdf_doc["salt"]), SALT_LEN, "kdf.salt"),
            wrap_nonce=_exact(_unb64(wrapped["nonce"]), _NONCE_LEN, "master_key.nonce"),
            wrapped_key=_exact(_unb64(wrapped["wrapped"]), KEY_LEN + 16, "master_key.wrapped"),
            mac=_exact(bytes.fromhex(mac["value"]), 32, "mac.value"),
            format_version=version,
        )
        if header._body().keys() | {"mac"} != doc.keys():
            raise HeaderError(f"unexpected fields {sorted(doc.keys() - header._body().keys())}")
        return header


def create_vault(
    passphrase: str,
    *,
    now_ns: int,
    params: KdfParams = KDF_DEFAULT,
    min_params: KdfParams = KDF_FLOOR,
) -> tuple[VaultHeader, VaultKeys]:
    """A new vault id and master key, wrapped by `passphrase`; returns the header to store."""
    normalize_passphrase(passphrase)
    params.check(min_params)
    vault_id = secrets.token_bytes(VAULT_ID_LEN)
    keys = VaultKeys.generate(vault_id)
    draft = VaultHeader(
        vault_id=vault_id,
        created_ns=now_ns,
        generation=1,
        state=VaultState.ACTIVE,
        kdf=params,
        salt=b"",
        wrap_nonce=b"",
        wrapped_key=b"",
        mac=b"",
    )
    return _wrap(draft, keys, passphrase, params), keys


def unlock(
    header: VaultHeader,
    passphrase: str,
    *,
    min_params: KdfParams = KDF_FLOOR,
    min_generation: int = 0,
) -> VaultKeys:
    """The vault's keys, or WrongPassphraseError / WeakKdfParamsError / HeaderTamperedError."""
    normalize_passphrase(passphrase)
    header.kdf.check(min_params)
    kek = derive_kek(passphrase, header.salt, header.kdf)
    try:
        master = AESGCM(kek).decrypt(header.wrap_nonce, header.wrapped_key, header._wrap_ad())
    except InvalidTag as err:
        raise WrongPassphraseError(header.vault_id_hex) from err
    keys = VaultKeys.from_master(header.vault_id, master)
    if not hmac.compare_digest(header.mac, header._expected_mac(keys)):
        raise HeaderTamperedError(
            f"vault {header.vault_id_hex}: the MAC does not match; a field (state,"
            " generation, dates) was changed without the vault key"
        )
    if header.generation < min_generation:
        raise RollbackError(
            HEADER_NAME,
            "header",
            f"generation {header.generation} is older than generation {min_generation}"
            " already seen: an older header was restored",
        )
    return keys


def rewrap(
    header: VaultHeader,
    old_passphrase: str,
    new_passphrase: str,
    *,
    params: KdfParams | None = None,
    min_params: KdfParams = KDF_FLOOR,
) -> VaultHeader:
    """The header with the same master key wrapped by `new_passphrase` under a new salt."""
    normalize_passphrase(new_passphrase)
    new_params = header.kdf if params is None else params
    new_params.check(min_params)
    keys = unlock(header, old_passphrase, min_params=min_params)
    bumped = replace(header, generation=header.generation + 1)
    return _wrap(bumped, keys, new_passphrase, new_params)


def with_state(header: VaultHeader, keys: VaultKeys, state: VaultState) -> VaultHeader:
    """The header with a new subscription state, re-authenticated with the vault key."""
    if keys.vault_id != header.vault_id or not hmac.compare_digest(
        header.mac, header._expected_mac(keys)
    ):
        raise HeaderTamperedError(f"vault {header.vault_id_hex}: not authenticated by these keys")
    changed = replace(header, state=state, generation=header.generation + 1)
    return replace(changed, mac=changed._expected_mac(keys))


def _wrap(header: VaultHeader, keys: VaultKeys, passphrase: str, params: KdfParams) -> VaultHeader:
    salt = secrets.token_bytes(SALT_LEN)
    kek = derive_kek(passphrase, salt, params)
    nonce = secrets.token_bytes(_NONCE_LEN)
    salted = replace(header, kdf=params, salt=salt, wrap_nonce=nonce)
    wrapped = AESGCM(kek).encrypt(nonce, keys.master, salted._wrap_ad())
    done = replace(salted, wrapped_key=wrapped)
    return replace(done, mac=done._expected_mac(keys))


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise TypeError("expected a base64 string")
    return base64.b64decode(text, validate=True)


def _exact(raw: bytes, length: int, field: str) -> bytes:
    if len(raw) != length:
        raise ValueError(f"{field} must be {length} bytes, got {len(raw)}")
    return raw


def _nonneg(value: Any, field: str) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{field} must be a non-negative integer")
    return value
