"""Sealing vault objects with AES-256-GCM (pure, blocking: call from an executor).

    offset  size  field
    0       3     magic b"SKV"
    3       1     format version
    4       12    random nonce
    16      n+16  ciphertext and GCM tag

Associated data: b"stockade-vault" | vault id | version | len-prefixed kind | len-prefixed
object id. Opening checks all of it, so any change to the bytes, the name an object is
read under, the kind it is read as, or the vault yields `TamperedObjectError` naming the
object, and never plaintext. Nonces are random 96-bit: under one key this stays far
below the 2^32-message bound while a vault holds under ~4 PiB of 1 MiB chunks.
"""

from __future__ import annotations

import secrets
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage_pool.vault.format import FORMAT_VERSION, ObjectKind
from storage_pool.vault.format_errors import TamperedObjectError
from storage_pool.vault.keys import VaultKeys

MAGIC = b"SKV"
NONCE_LEN = 12
TAG_LEN = 16
PREFIX_LEN = len(MAGIC) + 1 + NONCE_LEN
OVERHEAD = PREFIX_LEN + TAG_LEN
_U16 = struct.Struct("<H")


class ObjectCipher:
    """Seals and opens the objects of one vault with its object subkey."""

    __slots__ = ("_aead", "_vault_id")

    def __init__(self, keys: VaultKeys) -> None:
        self._aead = AESGCM(keys.object_key)
        self._vault_id = keys.vault_id

    def __repr__(self) -> str:
        return f"ObjectCipher(vault_id={self._vault_id.hex()})"

    def _ad(self, kind: ObjectKind, object_id: str) -> bytes:
        kind_b = kind.value.encode()
        id_b = object_id.encode()
        return b"".join(
            (
                b"stockade-vault",
                self._vault_id,
                bytes((FORMAT_VERSION,)),
                _U16.pack(len(kind_b)),
                kind_b,
                _U16.pack(len(id_b)),
                id_b,
            )
        )

    def seal(self, kind: ObjectKind, object_id: str, plaintext: bytes | memoryview) -> bytes:
        nonce = secrets.token_bytes(NONCE_LEN)
        sealed = self._aead.encrypt(nonce, bytes(plaintext), self._ad(kind, object_id))
        return b"".join((MAGIC, bytes((FORMAT_VERSION,)), nonce, sealed))

    def open(self, kind: ObjectKind, object_id: str, data: bytes | memoryview) -> bytes:
        """The plaintext of `data` read as `kind` object `object_id`, or TamperedObjectError."""
        view = memoryview(data)
        if len(view) < OVERHEAD:
            raise TamperedObjectError(
                object_id, kind, f"{len(view)} bytes is shorter than any sealed object (truncated)"
            )
        if bytes(view[: len(MAGIC)]) != MAGIC:
            raise TamperedObjectError(object_id, kind, "not a sealed vault object (bad magic)")
        version = view[len(MAGIC)]
        if version != FORMAT_VERSION:
            raise TamperedObjectError(object_id, kind, f"unknown sealed-object version {version}")
        nonce = bytes(view[len(MAGIC) + 1 : PREFIX_LEN])
        try:
            return self._aead.decrypt(nonce, bytes(view[PREFIX_LEN:]), self._ad(kind, object_id))
        except InvalidTag as err:
            raise TamperedObjectError(
                object_id,
                kind,
                "does not authenticate (altered, truncated, stored under another name,"
                " of another kind, or from another vault)",
            ) from err
