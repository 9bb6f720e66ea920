"""The local location cache: which chunks the vault holds and where (one SQLite file).

It is what lets an online backup skip chunks the vault already has and resume without
re-uploading, and what a restore uses to find a blob without reading index segments.
It is a cache: everything in it is rebuildable from the vault alone (`rebuild`, in
vault.py): the index segments, plus the trailer of every pack no segment covers (an
orphan of an interrupted job, adopted rather than re-uploaded).

Tables::

    meta(key, value)                         vault_id, trusted catalog generation
    packs(name, size, segment)               packs the vault holds; segment NULL until an
                                             index segment covers the pack
    chunks(cid, pack, offset, length)        one location per chunk (the first recorded)
    segments(name, sha256)                   index segments the vault holds
    manifests(name, sequence)                online-RP manifests this cache has seen

Write rule: a pack is recorded only after the vault confirmed it (put returned and head
shows its size), in one transaction with its chunk rows, so the cache never claims a
chunk the vault lacks. A crash after the upload but before the record leaves the pack's
scratch file behind, and the next job adopts it (uploader.py).

Blocking (sqlite3): call from a worker thread. One connection, serialised by a lock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from storage_pool.ids import ChunkId, as_chunk_id
from storage_pool.vault.index_segment import ChunkLocation
from storage_pool.vault.online_manifest import SegmentRef
from storage_pool.vault.pack import BlobRef

CACHE_NAME = "vault-cache.sqlite"
_BATCH = 500
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS packs (
    name TEXT PRIMARY KEY, size INTEGER NOT NULL, segment TEXT);
CREATE TABLE IF NOT EXISTS chunks (
    cid BLOB PRIMARY KEY, pack TEXT NOT NULL, offset INTEGER NOT NULL,
    length INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_by_pack ON chunks (pack);
CREATE TABLE IF NOT EXISTS segments (name TEXT PRIMARY KEY, sha256 BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS manifests (name TEXT PRIMARY KEY, sequence INTEGER NOT NULL);
"""


def _batches(ids: Sequence[ChunkId]) -> Iterator[Sequence[ChunkId]]:
    for i in range(0, len(ids), _BATCH):
        yield ids[i : i + _BATCH]


class LocationCache:
    """Chunk locations and known objects of one vault, in ``<directory>/vault-cache.sqlite``."""

    def __init__(self, directory: Path, vault_id: bytes) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / CACHE_NAME
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        found = self.get_meta("vault_id")
        if found != vault_id.hex():
            # A cache of another vault (or none yet): start empty rather than trust it.
            self.clear()
            self.set_meta("vault_id", vault_id.hex())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, statements: Iterable[tuple[str, Iterable[tuple[object, ...]]]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in statements:
                    self._db.executemany(sql, rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- meta --

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._write([("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(key, value)])])

    @property
    def trusted_generation(self) -> int:
        """The highest catalog generation seen: a vault showing less was rolled back."""
        return int(self.get_meta("generation") or 0)

    def see_generation(self, generation: int) -> None:
        if generation > self.trusted_generation:
            self.set_meta("generation", str(generation))

    def clear(self) -> None:
        """Forget everything but the trusted generation (kept: it guards against rollback)."""
        self._write(
            [
                (f"DELETE FROM {table}", [()])
                for table in ("packs", "chunks", "segments", "manifests")
            ]
        )

    def is_empty(self) -> bool:
        return not self._query("SELECT 1 FROM packs LIMIT 1") and not self._query(
            "SELECT 1 FROM segments LIMIT 1"
        )

    # -- packs and chunks --

    def add_pack(
        self, name: str, size: int, blobs: Iterable[BlobRef], *, segment: str | None = None
    ) -> None:
        """Record a pack the vault holds, with its blobs (first location of a chunk wins)."""
        self._write(
            [
                ("INSERT OR REPLACE INTO packs VALUES (?, ?, ?)", [(name, size, segment)]),
                (
                    "INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?)",
                    [(bytes(b.chunk_id), name, b.offset, b.length) for b in blobs],
                ),
            ]
        )

    def has_pack(self, name: str) -> bool:
        return bool(self._query("SELECT 1 FROM packs WHERE name = ?", (name,)))

    def packs(self) -> dict[str, int]:
        return {str(n): int(s) for n, s in self._query("SELECT name, size FROM packs")}

    def missing(self, ids: Sequence[ChunkId]) -> list[ChunkId]:
        """The ids (deduplicated, in order) the vault does not hold."""
        unique = list(dict.fromkeys(ids))
        known: set[bytes] = set()
        for batch in _batches(unique):
            marks = ",".join("?" * len(batch))
            rows = self._query(f"SELECT cid FROM chunks WHERE cid IN ({marks})", list(batch))
            known.update(bytes(r[0]) for r in rows)
        return [c for c in unique if bytes(c) not in known]

    def locate(self, ids: Sequence[ChunkId]) -> dict[ChunkId, ChunkLocation]:
        out: dict[ChunkId, ChunkLocation] = {}
        for batch in _batches(list(dict.fromkeys(ids))):
            marks = ",".join("?" * len(batch))
            rows = self._query(
                f"SELECT cid, pack, offset, length FROM chunks WHERE cid IN ({marks})",
                list(batch),
            )
            for cid, pack, offset, length in rows:
                ref = BlobRef(as_chunk_id(bytes(cid)), int(offset), int(length))
                out[ref.chunk_id] = ChunkLocation(str(pack), ref)
        return out

    def blobs_of(self, pack: str) -> list[BlobRef]:
        rows = self._query(
            "SELECT cid, offset, length FROM chunks WHERE pack = ? ORDER BY offset", (pack,)
        )
        return [BlobRef(as_chunk_id(bytes(c)), int(o), int(n)) for c, o, n in rows]

    def forget(self, packs: Iterable[str], segments: Iterable[str] = ()) -> None:
        """Drop packs (with their chunk rows) and segments that vault GC removed or
        superseded (vault_gc.py). A kept pack whose segment is dropped becomes unindexed,
        so the next job writes a segment for it; a dropped chunk row is only re-uploaded."""
        packs, segments = list(packs), list(segments)
        self._write(
            [
                ("DELETE FROM chunks WHERE pack = ?", [(p,) for p in packs]),
                ("DELETE FROM packs WHERE name = ?", [(p,) for p in packs]),
                ("UPDATE packs SET segment = NULL WHERE segment = ?", [(s,) for s in segments]),
                ("DELETE FROM segments WHERE name = ?", [(s,) for s in segments]),
            ]
        )

    # -- index segments --

    def unindexed_packs(self) -> list[str]:
        return sorted(
            str(r[0]) for r in self._query("SELECT name FROM packs WHERE segment IS NULL")
        )

    def add_segment(self, name: str, sha256: bytes, packs: Iterable[str]) -> None:
        """Record an index segment the vault holds and the packs it covers."""
        self._write(
            [
                ("INSERT OR REPLACE INTO segments VALUES (?, ?)", [(name, sha256)]),
                ("UPDATE packs SET segment = ? WHERE name = ?", [(name, p) for p in packs]),
            ]
        )

    def segments_for(self, ids: Sequence[ChunkId]) -> list[SegmentRef]:
        """The index segments that locate `ids`, newest recorded first; ValueError if one
        is not indexed yet."""
        names: set[str] = set()
        for batch in _batches(list(dict.fromkeys(ids))):
            marks = ",".join("?" * len(batch))
            rows = self._query(
                "SELECT DISTINCT p.name, p.segment FROM chunks c JOIN packs p ON c.pack = p.name"
                f" WHERE c.cid IN ({marks})",
                list(batch),
            )
            for pack, segment in rows:
                if segment is None:
                    raise ValueError(f"pack {pack} is not covered by an index segment yet")
                names.add(str(segment))
        found: list[tuple[int, str, bytes]] = []
        for name in names:
            rows = self._query("SELECT rowid, sha256 FROM segments WHERE name = ?", (name,))
            if not rows:
                raise ValueError(f"index segment {name} is not recorded")
            found.append((int(rows[0][0]), name, bytes(rows[0][1])))
        # Newest recorded first: readers take a chunk's first row in pinned order, and a
        # newer segment never names a pack that GC removed before it was written.
        return [SegmentRef(name, sha) for _, name, sha in sorted(found, reverse=True)]

    # -- manifests --

    def add_manifest(self, name: str, sequence: int) -> None:
        self._write([("INSERT OR REPLACE INTO manifests VALUES (?, ?)", [(name, sequence)])])

    def manifests(self) -> dict[str, int]:
        return {str(n): int(s) for n, s in self._query("SELECT name, sequence FROM manifests")}

    def counts(self) -> dict[str, int]:
        """Rows per table, for tests and diagnostics."""
        return {
            t: int(self._query(f"SELECT COUNT(*) FROM {t}")[0][0])
            for t in ("packs", "chunks", "segments", "manifests")
        }
