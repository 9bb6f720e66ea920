"""Opaque object names: ``data/<2 hex>/<64 hex>`` (layout in format.py).

The 32 bytes behind the hex are 16 random bytes and the first 16 bytes of
HMAC-SHA256(names subkey, b"kind" | kind | random). Names are random, never derived from
content, and never reused: a rewritten object gets a new name.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from storage_pool.vault.format import DATA_PREFIX, NAMED_KINDS, ObjectKind
from storage_pool.vault.keys import VaultKeys

_RAND_LEN = 16
_TAG_LEN = 16
_NAME_RE = re.compile(r"^data/([0-9a-f]{2})/([0-9a-f]{64})$")


class ObjectNamer:
    """Makes and classifies the object names of one vault."""

    __slots__ = ("_key",)

    def __init__(self, keys: VaultKeys) -> None:
        self._key = keys.name_key

    def __repr__(self) -> str:
        return "ObjectNamer(<key hidden>)"

    def _tag(self, kind: ObjectKind, rand: bytes) -> bytes:
        msg = b"kind\0" + kind.value.encode() + b"\0" + rand
        return hmac.new(self._key, msg, hashlib.sha256).digest()[:_TAG_LEN]

    def new_name(self, kind: ObjectKind) -> str:
        if kind not in NAMED_KINDS:
            raise ValueError(f"{kind} objects are parts of a pack and have no name of their own")
        rand = secrets.token_bytes(_RAND_LEN)
        hexed = (rand + self._tag(kind, rand)).hex()
        return f"{DATA_PREFIX}{hexed[:2]}/{hexed}"

    def kind_of(self, name: str) -> ObjectKind | None:
        """The kind a name was made for, or None for a name this vault's key did not make."""
        match = _NAME_RE.match(name)
        if match is None or match.group(1) != match.group(2)[:2]:
            return None
        raw = bytes.fromhex(match.group(2))
        rand, tag = raw[:_RAND_LEN], raw[_RAND_LEN:]
        for kind in NAMED_KINDS:
            if hmac.compare_digest(tag, self._tag(kind, rand)):
                return kind
        return None


def shard_prefixes() -> list[str]:
    """The 256 listing prefixes under ``data/``, for parallel listing."""
    return [f"{DATA_PREFIX}{i:02x}/" for i in range(256)]


def is_object_name(name: object) -> bool:
    """Whether `name` has the shape of a vault object name (any vault, any kind)."""
    if not isinstance(name, str):
        return False
    match = _NAME_RE.match(name)
    return match is not None and match.group(1) == match.group(2)[:2]
