"""Typed identifiers of the storage pool.

`ChunkId` is the SHA-256 of a chunk's plaintext. `RecoveryPointId` names one committed
recovery point; it sorts by creation time.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime
from typing import NewType

ChunkId = NewType("ChunkId", bytes)
RecoveryPointId = NewType("RecoveryPointId", str)

CHUNK_ID_LEN = 32
_RP_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")


def chunk_id_of(data: bytes | bytearray | memoryview) -> ChunkId:
    return ChunkId(hashlib.sha256(data).digest())


def chunk_id_from_hex(text: str) -> ChunkId:
    """Parse a 64-digit hex chunk id; ValueError names the bad text."""
    try:
        raw = bytes.fromhex(text)
    except ValueError as err:
        raise ValueError(f"not a chunk id (64 hex digits): {text!r}") from err
    if len(raw) != CHUNK_ID_LEN:
        raise ValueError(f"not a chunk id (64 hex digits): {text!r}")
    return ChunkId(raw)


def as_chunk_id(raw: bytes) -> ChunkId:
    """Check that `raw` has the shape of a chunk id (32 bytes)."""
    if not isinstance(raw, bytes) or len(raw) != CHUNK_ID_LEN:
        raise ValueError(f"a chunk id is {CHUNK_ID_LEN} bytes, got {raw!r:.80}")
    return ChunkId(raw)


def new_recovery_point_id(now: datetime) -> RecoveryPointId:
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return RecoveryPointId(f"{stamp}-{secrets.token_hex(4)}")


def parse_recovery_point_id(text: str) -> RecoveryPointId:
    if not _RP_ID_RE.match(text):
        raise ValueError(f"not a recovery point id: {text!r}")
    return RecoveryPointId(text)
