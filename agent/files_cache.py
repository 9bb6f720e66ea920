"""The agent's files cache: what each file looked like at the last committed backup.

One SQLite file under the agent's state dir (sqlite3, blocking: call it from a worker
thread) holds, per data source, the recovery point the cache describes and, per file
path (the manifest path), the fields the walker needs to reuse an unchanged file without
reading it: size, mtime_ns, ctime_ns, inode, chunk ids, chunk sizes and holes.

Write order: `replace` runs only after the server confirmed the commit of `rp_id`, and
swaps a data source's rows in one transaction. A crash before leaves the previous cache,
which is still correct: every chunk id it offers is re-checked with `missing_sync`, and a
missing one means the file is read again. For the same reason the cache is disposable:
a file that SQLite cannot read is moved aside (`<name>.corrupt-<time>`) with a warning
and rebuilt empty, so the next backup reads everything once, and never fails.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import structlog

from storage_pool.ids import CHUNK_ID_LEN, ChunkId
from storage_pool.manifest import Entry, EntryType

__all__ = ["SCHEMA_VERSION", "FilesCache"]

log = structlog.get_logger()

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    data_source TEXT PRIMARY KEY,
    rp_id TEXT NOT NULL,
    updated_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    data_source TEXT NOT NULL,
    path BLOB NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    chunk_ids BLOB NOT NULL,
    chunk_sizes BLOB NOT NULL,
    holes BLOB NOT NULL,
    PRIMARY KEY (data_source, path)
) WITHOUT ROWID;
"""
_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1

T = TypeVar("T")
_Row = tuple[bytes, int, int, int, int, bytes, bytes, bytes]


def _to_i64(value: int) -> int:
    """SQLite integers are signed 64-bit; inode numbers may use all 64 bits."""
    return value - _U64 if value > _I64_MAX else value


def _from_i64(value: int) -> int:
    return value + _U64 if value < 0 else value


def _pack(values: Iterable[int]) -> bytes:
    return array("Q", values).tobytes()


def _unpack(raw: bytes) -> list[int]:
    if len(raw) % 8:
        raise ValueError("packed integers have a partial item")
    out = array("Q")
    out.frombytes(raw)
    return out.tolist()


def _row_of(entry: Entry) -> _Row:
    return (
        entry.path,
        entry.size,
        entry.mtime_ns,
        entry.ctime_ns,
        _to_i64(entry.inode),
        b"".join(entry.chunk_ids),
        _pack(entry.chunk_sizes),
        _pack(x for hole in entry.holes for x in hole),
    )


def _entry_of(row: _Row) -> Entry:
    """The cached fields as a FILE entry; ValueError for a row that cannot be one."""
    path, size, mtime_ns, ctime_ns, inode, raw_ids, raw_sizes, raw_holes = row
    if not isinstance(path, bytes) or not path:
        raise ValueError("path is not bytes")
    if len(raw_ids) % CHUNK_ID_LEN:
        raise ValueError("chunk ids have a partial id")
    ids = tuple(
        ChunkId(raw_ids[i : i + CHUNK_ID_LEN]) for i in range(0, len(raw_ids), CHUNK_ID_LEN)
    )
    sizes = tuple(_unpack(raw_sizes))
    flat = _unpack(raw_holes)
    if len(sizes) != len(ids) or sum(sizes) != size or len(flat) % 2:
        raise ValueError("chunk sizes do not add up to the size")
    holes = tuple((flat[i], flat[i + 1]) for i in range(0, len(flat), 2))
    return Entry(
        path=path,
        type=EntryType.FILE,
        size=size,
        mtime_ns=mtime_ns,
        ctime_ns=ctime_ns,
        inode=_from_i64(inode),
        chunk_ids=ids,
        chunk_sizes=sizes,
        holes=holes,
    )


class FilesCache:
    """The files cache in one SQLite file. Thread-safe (one lock); blocking."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> FilesCache:
        """Open (creating it and its directory if needed) the cache at `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = _connect(path)
        except sqlite3.DatabaseError as err:
            _move_aside(path, err)
            conn = _connect(path)
        return cls(path, conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> FilesCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self, data_source_id: str) -> tuple[str | None, dict[bytes, Entry]]:
        """(the recovery point the cache describes, its files by manifest path); (None,
        {}) when the data source has no cache. Unreadable rows are dropped from the
        answer (a cache miss costs a read, nothing more)."""

        def work(conn: sqlite3.Connection) -> tuple[str | None, dict[bytes, Entry]]:
            src = conn.execute(
                "SELECT rp_id FROM sources WHERE data_source = ?", (data_source_id,)
            ).fetchone()
            if src is None:
                return None, {}
            files: dict[bytes, Entry] = {}
            bad = 0
            for row in conn.execute(
                "SELECT path, size, mtime_ns, ctime_ns, inode, chunk_ids, chunk_sizes, holes"
                " FROM files WHERE data_source = ?",
                (data_source_id,),
            ):
                try:
                    entry = _entry_of(row)
                except (ValueError, TypeError):
                    bad += 1
                    continue
                files[entry.path] = entry
            if bad:
                log.warning(
                    "files_cache_rows_dropped",
                    path=str(self.path),
                    data_source=data_source_id,
                    rows=bad,
                )
            return str(src[0]), files

        return self._run(work, lambda: (None, {}))

    def replace(self, data_source_id: str, rp_id: str, entries: Iterable[Entry]) -> int:
        """Make the cache of `data_source_id` describe `rp_id` with exactly `entries`
        (regular files with chunks; others are skipped), in one transaction. Call it
        only once the server confirmed the commit of `rp_id`. Returns the rows written."""
        # Materialised first: a write that meets a damaged file is retried on a new one.
        rows = [_row_of(e) for e in entries if e.type is EntryType.FILE and e.chunk_ids]

        def work(conn: sqlite3.Connection) -> int:
            with conn:  # one transaction: the old rows or the new ones
                conn.execute("DELETE FROM files WHERE data_source = ?", (data_source_id,))
                conn.executemany(
                    "INSERT OR REPLACE INTO files (data_source, path, size, mtime_ns, ctime_ns,"
                    " inode, chunk_ids, chunk_sizes, holes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    ((data_source_id, *row) for row in rows),
                )
                conn.execute(
                    "INSERT OR REPLACE INTO sources (data_source, rp_id, updated_ns)"
                    " VALUES (?, ?, ?)",
                    (data_source_id, rp_id, time.time_ns()),
                )
            return len(rows)

        return self._run(work)

    def forget(self, data_source_id: str) -> None:
        """Drop a data source's cache (its next backup reads every file)."""

        def work(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("DELETE FROM files WHERE data_source = ?", (data_source_id,))
                conn.execute("DELETE FROM sources WHERE data_source = ?", (data_source_id,))

        self._run(work)

    def _run(
        self, work: Callable[[sqlite3.Connection], T], fallback: Callable[[], T] | None = None
    ) -> T:
        """Run `work`; on a damaged file, move it aside and start an empty one, then
        answer `fallback()`, or without one run `work` again on the new file."""
        with self._lock:
            try:
                return work(self._conn)
            except sqlite3.DatabaseError as err:
                if not _is_corruption(err):
                    raise  # locked, disk full, read-only: not the file's fault
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                _move_aside(self.path, err)
                self._conn = _connect(self.path)
                return work(self._conn) if fallback is None else fallback()


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level="DEFERRED")
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(_SCHEMA)
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if version is None:
            with conn:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
        elif version[0] != str(SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"files cache schema {version[0]!r} is not supported")
        # A cheap structural check of the pages SQLite reads first; deeper damage shows
        # as DatabaseError on a later query and is handled there.
        row = conn.execute("PRAGMA quick_check(1)").fetchone()
        if row is None or row[0] != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {row[0] if row else 'no answer'}")
    except BaseException:
        conn.close()
        raise
    return conn


def _is_corruption(err: sqlite3.DatabaseError) -> bool:
    """Damage to the file itself, as opposed to a locked database or a full disk."""
    code = getattr(err, "sqlite_errorcode", None)
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return True
    text = str(err).lower()
    return "malformed" in text or "not a database" in text


def _companions(path: Path) -> Iterator[Path]:
    yield path
    for suffix in ("-journal", "-wal", "-shm"):
        yield path.with_name(path.name + suffix)


def _move_aside(path: Path, err: BaseException) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = path.with_name(f"{path.name}.corrupt-{stamp}-{os.getpid()}")
    for p in _companions(path):
        with contextlib.suppress(FileNotFoundError):
            p.rename(moved.with_name(moved.name + p.name[len(path.name) :]))
    log.warning("files_cache_corrupt", path=str(path), moved_to=str(moved), error=str(err))
