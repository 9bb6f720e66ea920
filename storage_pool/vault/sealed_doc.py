"""Sealed msgpack documents: the shared shape of trailers, index segments, manifests and
catalogs. Each is a msgpack map with a version field "v", sealed by crypto.py.

unpackb bounds every container by the input's length. Decoding trusts nothing even after
the AEAD check (a bug or a newer writer can still produce surprises): unexpected shapes
raise `ObjectFormatError` naming the object.
"""

from __future__ import annotations

from typing import Any

import msgpack

from storage_pool.vault.crypto import ObjectCipher
from storage_pool.vault.format import ObjectKind
from storage_pool.vault.format_errors import ObjectFormatError


def seal_doc(cipher: ObjectCipher, kind: ObjectKind, name: str, doc: dict[str, Any]) -> bytes:
    return cipher.seal(kind, name, msgpack.packb(doc, use_bin_type=True))


def open_doc(
    cipher: ObjectCipher, kind: ObjectKind, name: str, data: bytes | memoryview, version: int
) -> dict[str, Any]:
    """Authenticate, then decode a version-`version` document (or ObjectFormatError)."""
    return decode_doc(kind, name, cipher.open(kind, name, data), version)


def decode_doc(kind: ObjectKind, name: str, plain: bytes, version: int) -> dict[str, Any]:
    try:
        doc: Any = msgpack.unpackb(plain, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as err:
        raise ObjectFormatError(name, kind, f"not a msgpack document: {err}") from err
    if not isinstance(doc, dict):
        raise ObjectFormatError(name, kind, "not a msgpack map")
    found = doc.get("v")
    if found != version:
        raise ObjectFormatError(
            name, kind, f"document version {found!r:.20} is not supported (expected {version})"
        )
    return doc


Where = tuple[ObjectKind, str]  # (kind, name) of the object being decoded, for errors


def int_field(doc: dict[str, Any], key: str, where: Where) -> int:
    """A non-negative integer field (bool is not an int here)."""
    value = doc.get(key)
    if type(value) is not int or value < 0:
        raise ObjectFormatError(where[1], where[0], f"field {key!r} must be a non-negative int")
    return value


def str_field(doc: dict[str, Any], key: str, where: Where, *, max_len: int = 1024) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or len(value) > max_len:
        raise ObjectFormatError(where[1], where[0], f"field {key!r} must be a str of <= {max_len}")
    return value


def bytes_field(doc: dict[str, Any], key: str, where: Where) -> bytes:
    value = doc.get(key)
    if not isinstance(value, bytes):
        raise ObjectFormatError(where[1], where[0], f"field {key!r} must be bytes")
    return value
