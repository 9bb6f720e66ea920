"""Recovery-point records: the small file whose appearance commits a backup.

`recovery_points/<quoted data source>/<rp id>.json` holds the list of manifest chunks and
the RP's summary, with a SHA-256 over its own canonical content. It is written last, with
write_atomic, after every chunk it reaches is durable: its presence is the commit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from storage_pool.errors import ManifestError
from storage_pool.ids import (
    ChunkId,
    RecoveryPointId,
    chunk_id_from_hex,
    parse_recovery_point_id,
)

RECORD_VERSION = 1
RP_DIR = "recovery_points"
MAX_DATA_SOURCE = 1024


def check_data_source(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_DATA_SOURCE:
        raise ValueError(f"data source name must be 1..{MAX_DATA_SOURCE} characters")
    if any(ord(ch) < 32 for ch in name):
        raise ValueError(f"data source name contains control characters: {name!r}")
    return name


def data_source_dirname(name: str) -> str:
    quoted = quote(name, safe="")
    # Long names would break the 255-byte file-name limit; hash them instead.
    if len(quoted) > 200 or quoted.startswith("."):
        return "~" + hashlib.sha256(name.encode()).hexdigest()
    return quoted


@dataclass(frozen=True, slots=True)
class RecoveryPoint:
    id: RecoveryPointId
    data_source: str
    created_ns: int
    manifest_chunks: tuple[ChunkId, ...]
    manifest_bytes: int
    entries: int
    files: int
    logical_bytes: int
    parent: RecoveryPointId | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def created(self) -> datetime:
        return datetime.fromtimestamp(self.created_ns / 1e9, UTC)

    def _body(self) -> dict[str, Any]:
        return {
            "record_version": RECORD_VERSION,
            "id": self.id,
            "data_source": self.data_source,
            "created_ns": self.created_ns,
            "parent": self.parent,
            "manifest": {
                "chunks": [c.hex() for c in self.manifest_chunks],
                "bytes": self.manifest_bytes,
            },
            "entries": self.entries,
            "files": self.files,
            "logical_bytes": self.logical_bytes,
            "labels": dict(self.labels),
        }

    def to_json(self) -> bytes:
        body = self._body()
        body["checksum"] = _checksum(body)
        return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, where: Path) -> RecoveryPoint:
        what = f"recovery point record {where}"
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            version = doc.get("record_version")
            if version != RECORD_VERSION:
                raise ValueError(f"unknown record version {version!r}")
            stored = doc.pop("checksum", None)
            if stored != _checksum(doc):
                raise ValueError("checksum mismatch (the record was altered or damaged)")
            labels = doc.get("labels", {})
            if not isinstance(labels, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
            ):
                raise ValueError("labels must map strings to strings")
            parent = doc.get("parent")
            rp = cls(
                id=parse_recovery_point_id(doc["id"]),
                data_source=check_data_source(doc["data_source"]),
                created_ns=_nonneg(doc["created_ns"]),
                manifest_chunks=tuple(chunk_id_from_hex(h) for h in doc["manifest"]["chunks"]),
                manifest_bytes=_nonneg(doc["manifest"]["bytes"]),
                entries=_nonneg(doc["entries"]),
                files=_nonneg(doc["files"]),
                logical_bytes=_nonneg(doc["logical_bytes"]),
                parent=None if parent is None else parse_recovery_point_id(parent),
                labels=labels,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ManifestError(what, str(err)) from err
        if where.stem != rp.id:
            raise ManifestError(what, f"file name does not match its id {rp.id}")
        return rp


def _nonneg(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r:.40}")
    return value


def _checksum(body: dict[str, Any]) -> str:
    canon = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canon).hexdigest()


def record_path(root: Path, rp: RecoveryPoint) -> Path:
    return root / RP_DIR / data_source_dirname(rp.data_source) / f"{rp.id}.json"


def data_source_of_dir(dirname: str) -> str | None:
    """The data source a directory name was made from, when it is not hashed."""
    return None if dirname.startswith("~") else unquote(dirname)
