"""The chunk index: which chunks the pool holds, in SQLite (`index.sqlite`).

The index is a cache of the `chunks/` tree and can always be rebuilt from it. One rule
keeps it safe: a row exists only while its chunk file is durable. A row is inserted after
the chunk file and its directory are fsynced, and deleted before the file is unlinked.
A crash can therefore leave a file without a row (a chunk that looks missing and is
written again, or an orphan GC removes), never a row without a file.

Lookups run on a per-thread connection (WAL lets readers proceed beside a writer); the
B-tree is read from disk on demand, so the process never holds every id in memory.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from storage_pool.ids import ChunkId

INDEX_NAME = "index.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    id BLOB PRIMARY KEY,
    stored_size INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_BATCH = 500  # ids per IN (...) query; well under SQLite's variable limit


class ChunkIndex:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._write_lock = threading.Lock()  # one writer at a time, no busy retries
        self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a power loss may drop the last transactions, which only makes chunks
            # look missing (they are written again); it never invents a row.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("PRAGMA cache_size=-65536")
            conn.execute("PRAGMA mmap_size=268435456")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    def present(self, ids: Sequence[ChunkId]) -> set[ChunkId]:
        """The subset of `ids` the index holds."""
        conn = self._conn()
        found: set[ChunkId] = set()
        ordered = sorted(set(ids))  # sorted keys walk the B-tree with good locality
        for i in range(0, len(ordered), _BATCH):
            batch = ordered[i : i + _BATCH]
            marks = ",".join("?" * len(batch))
            for (cid,) in conn.execute(f"SELECT id FROM chunks WHERE id IN ({marks})", batch):
                found.add(ChunkId(cid))
        return found

    def contains(self, cid: ChunkId) -> bool:
        row = self._conn().execute("SELECT 1 FROM chunks WHERE id = ?", (cid,)).fetchone()
        return row is not None

    def add(self, rows: Iterable[tuple[ChunkId, int]]) -> None:
        self._write("INSERT OR REPLACE INTO chunks (id, stored_size) VALUES (?, ?)", rows)

    def remove(self, ids: Iterable[ChunkId]) -> None:
        self._write("DELETE FROM chunks WHERE id = ?", ((cid,) for cid in ids))

    def _write(self, sql: str, rows: Iterable[tuple[object, ...]]) -> None:
        conn = self._conn()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(sql, rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def totals(self) -> tuple[int, int]:
        """(chunk count, stored bytes)."""
        row = self._conn().execute("SELECT count(*), coalesce(sum(stored_size), 0) FROM chunks")
        count, stored = row.fetchone()
        return int(count), int(stored)

    def iter_ids(self) -> list[ChunkId]:
        return [ChunkId(r[0]) for r in self._conn().execute("SELECT id FROM chunks ORDER BY id")]

    def get_meta(self, key: str) -> str | None:
        row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [(key, value)])

    def clear(self) -> None:
        self._write("DELETE FROM chunks", [()])
