"""Vault keys: passphrase rules, Argon2id parameters, the master key and its subkeys.

A vault has one random 32-byte master key. The passphrase never encrypts data: Argon2id
turns it (NFC-normalised, UTF-8) and the header's salt into a key-encryption key that
wraps the master key (header.py). Changing the passphrase re-wraps the same master key,
so no object is rewritten.

Subkeys come from the master key by HKDF-SHA256 (salt = the vault id, info = a fixed
label per purpose), so one purpose's key reveals nothing of another's:

    object    AES-256-GCM key sealing every object and pack blob (crypto.py)
    names     HMAC-SHA256 key tagging object names with their kind (names.py)
    header    HMAC-SHA256 key authenticating the header, its state field included

There is no keyed chunk-id subkey on purpose: chunk ids appear only inside sealed objects
(pack trailers, index segments, manifests), so hiding them again would only protect them
from someone who already holds the object key and can read the chunks themselves.

Argon2id with the default parameters takes ~0.1-0.2 s and 64 MiB: call `derive_kek`
from an executor, never on the event loop.
"""

from __future__ import annotations

import secrets
import unicodedata
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from storage_pool.vault.format_errors import (
    HeaderError,
    PassphraseTooShortError,
    WeakKdfParamsError,
)

KEY_LEN = 32
SALT_LEN = 16
MIN_PASSPHRASE_CHARS = 16
KDF_NAME = "argon2id"

_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id cost: memory in KiB, passes (t) and lanes (p)."""

    memory_kib: int
    iterations: int
    lanes: int

    def check(self, floor: KdfParams) -> None:
        """Refuse parameters weaker than `floor` or beyond sane ceilings.

        The ceilings bound what a hostile header can make a server spend opening it.
        """
        for field, value in self.as_dict().items():
            if type(value) is not int or value < 1:
                raise HeaderError(f"KDF parameter {field} must be a positive integer")
        if self.memory_kib > MAX_MEMORY_KIB or self.iterations > MAX_ITERATIONS:
            raise HeaderError(
                f"KDF parameters {self.describe()} exceed the ceiling"
                f" ({MAX_MEMORY_KIB} KiB, t={MAX_ITERATIONS})"
            )
        if self.lanes > MAX_LANES or self.memory_kib < 8 * self.lanes:
            raise HeaderError(f"KDF parameters {self.describe()} are not valid for Argon2id")
        if (
            self.memory_kib < floor.memory_kib
            or self.iterations < floor.iterations
            or self.lanes < floor.lanes
        ):
            raise WeakKdfParamsError(
                f"KDF parameters {self.describe()} are weaker than the enforced minimum"
                f" {floor.describe()}; refusing (a weakened or test-only header)"
            )

    def describe(self) -> str:
        return f"argon2id m={self.memory_kib} KiB t={self.iterations} p={self.lanes}"

    def as_dict(self) -> dict[str, int]:
        return {"memory_kib": self.memory_kib, "iterations": self.iterations, "lanes": self.lanes}

    @classmethod
    def from_dict(cls, doc: Any) -> KdfParams:
        if not isinstance(doc, dict):
            raise HeaderError("kdf must be an object")
        values: list[Any] = [doc.get(field) for field in ("memory_kib", "iterations", "lanes")]
        if not all(type(v) is int for v in values):
            raise HeaderError("kdf parameters memory_kib, iterations, lanes must be integers")
        return cls(*values)


MAX_MEMORY_KIB = 4 * 1024 * 1024
MAX_ITERATIONS = 64
MAX_LANES = 64
KDF_DEFAULT = KdfParams(memory_kib=64 * 1024, iterations=3, lanes=4)
KDF_FLOOR = KdfParams(memory_kib=64 * 1024, iterations=3, lanes=1)
# Test-only: cheap parameters, accepted only where a caller passes min_params=KDF_TESTING.
KDF_TESTING = KdfParams(memory_kib=8, iterations=1, lanes=1)


def normalize_passphrase(passphrase: str) -> bytes:
    """NFC-normalise and check length; the UTF-8 bytes are what Argon2id hashes."""
    if not isinstance(passphrase, str):
        raise TypeError("the passphrase must be a str")
    text = unicodedata.normalize("NFC", passphrase)
    if len(text) < MIN_PASSPHRASE_CHARS:
        raise PassphraseTooShortError(len(text), MIN_PASSPHRASE_CHARS)
    return text.encode()


def generate_passphrase() -> str:
    """32 random base32 characters (160 bits) in groups of four: print once, store offline."""
    chars = "".join(secrets.choice(_BASE32) for _ in range(32))
    return "-".join(chars[i : i + 4] for i in range(0, 32, 4))


def derive_kek(passphrase: str, salt: bytes, params: KdfParams) -> bytes:
    """The key-encryption key of a passphrase (blocking, CPU- and memory-heavy)."""
    secret = normalize_passphrase(passphrase)
    kdf = Argon2id(
        salt=salt,
        length=KEY_LEN,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    )
    return kdf.derive(secret)


def _subkey(master: bytes, vault_id: bytes, purpose: bytes) -> bytes:
    hkdf = HKDF(
        algorithm=SHA256(), length=KEY_LEN, salt=vault_id, info=b"stockade-vault/" + purpose
    )
    return hkdf.derive(master)


@dataclass(frozen=True, slots=True, repr=False)
class VaultKeys:
    """The unwrapped master key of one vault and its per-purpose subkeys.

    Lives only in the backup server's memory; repr hides the key bytes so a log line or
    traceback cannot leak them.
    """

    vault_id: bytes
    master: bytes
    object_key: bytes
    name_key: bytes
    header_key: bytes

    @classmethod
    def from_master(cls, vault_id: bytes, master: bytes) -> VaultKeys:
        if len(master) != KEY_LEN:
            raise ValueError(f"a master key is {KEY_LEN} bytes")
        return cls(
            vault_id=vault_id,
            master=master,
            object_key=_subkey(master, vault_id, b"object"),
            name_key=_subkey(master, vault_id, b"names"),
            header_key=_subkey(master, vault_id, b"header"),
        )

    @classmethod
    def generate(cls, vault_id: bytes) -> VaultKeys:
        return cls.from_master(vault_id, secrets.token_bytes(KEY_LEN))

    def __repr__(self) -> str:
        return f"VaultKeys(vault_id={self.vault_id.hex()}, <keys hidden>)"
