"""The pool's config file (`config.json`): format version and fixed parameters.

Written once at creation. A pool with a newer format version is refused, so an old
Stockade never misreads or damages data written by a newer one.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from storage_pool.atomicfile import write_atomic
from storage_pool.chunker import ChunkerParams
from storage_pool.errors import PoolConfigError, PoolVersionError

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
KIND = "stockade-storage-pool"


@dataclass(frozen=True, slots=True)
class PoolConfig:
    pool_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    chunker: ChunkerParams = field(default_factory=ChunkerParams)
    compression_level: int = 3
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not 0 <= self.compression_level <= 19:
            raise ValueError(f"compression level {self.compression_level} outside 0..19")

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "kind": KIND,
            "format_version": self.format_version,
            "pool_id": self.pool_id,
            "created": self.created,
            "hash": "sha256",
            "chunker": {"library": "pyfastcdc", **self.chunker.to_dict()},
            "compression": {"codec": "zstd", "level": self.compression_level},
            "layout": {"chunks": "chunks/<first 3 hex digits>/<64 hex digits>"},
        }
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def write_config(root: Path, cfg: PoolConfig) -> None:
    write_atomic(root / CONFIG_NAME, cfg.to_json())


def read_config(root: Path) -> PoolConfig:
    path = root / CONFIG_NAME
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError as err:
        raise PoolConfigError(path, "missing: this is not a storage pool") from err
    except (OSError, ValueError) as err:
        raise PoolConfigError(path, f"unreadable: {err}") from err
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise PoolConfigError(path, "not a Stockade storage pool config")
    version = doc.get("format_version")
    if not isinstance(version, int):
        raise PoolConfigError(path, "format_version is missing")
    if version > FORMAT_VERSION:
        raise PoolVersionError(
            path,
            f"format version {version} is newer than this Stockade supports"
            f" ({FORMAT_VERSION}); upgrade Stockade to open this pool",
        )
    try:
        chunker_doc = dict(doc["chunker"])
        if chunker_doc.pop("library", "pyfastcdc") != "pyfastcdc":
            raise ValueError("chunks were cut by another library")
        if doc.get("hash") != "sha256" or doc["compression"]["codec"] != "zstd":
            raise ValueError("unknown hash or codec")
        return PoolConfig(
            pool_id=str(doc["pool_id"]),
            created=str(doc["created"]),
            chunker=ChunkerParams.from_dict(chunker_doc),
            compression_level=int(doc["compression"]["level"]),
            format_version=version,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise PoolConfigError(path, f"invalid: {err}") from err
