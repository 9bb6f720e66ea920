"""The catalog's SQLite connection: opening, pragmas, migrations, transactions.

This is the only module of Stockade that imports aiosqlite; the table modules
(catalog_agents.py, catalog_jobs.py...) speak SQL through `Tx`.

Settings, chosen on purpose:

* ``journal_mode=WAL``: readers never block the writer; the API keeps reading while a job
  updates its progress.
* ``synchronous=FULL``: every commit fsyncs the WAL. ``NORMAL`` would be safe for what the
  catalog indexes (a power cut loses at most the last commits, and the pool can rebuild
  agents, data sources and RPs, see `rebuild_from_pool`), but agent credentials, command
  keys and token redemptions live only here: losing a committed registration would leave an
  agent holding a secret the server forgot. Catalog writes are a few per second (job
  transitions, throttled progress), so an fsync each costs nothing that matters.
* ``foreign_keys=ON``, ``busy_timeout=5000``: a second process (the CLI reading, a test)
  waits for the writer instead of failing at once.

Transactions: one connection, one asyncio.Lock. Every operation holds the lock for its
whole transaction, because statements of two coroutines on one connection would otherwise
land in the same SQLite transaction. Writes start with ``BEGIN IMMEDIATE`` so the write lock
is taken before the first read, which makes read-then-update sequences atomic across
processes too. A failing or cancelled operation rolls back: aiosqlite runs queued
statements in order, so the ROLLBACK is queued before the lock is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import aiosqlite
import structlog

from server import catalog_schema
from server.catalog_errors import CatalogError

__all__ = ["BUSY_TIMEOUT_MS", "CatalogBase", "Tx"]

log = structlog.get_logger()

BUSY_TIMEOUT_MS = 5000

# Positional (?) or named (:name) parameters of one statement.
Params = Sequence[Any] | Mapping[str, Any]


class Tx:
    """The statements of one catalog operation. `now` is the clock, read once for it."""

    def __init__(self, db: aiosqlite.Connection, now: float) -> None:
        self._db = db
        self.now = now

    async def run(self, sql: str, params: Params = ()) -> int:
        """Execute one statement; returns the number of rows it changed."""
        async with self._db.execute(sql, params) as cur:
            return cur.rowcount

    async def all(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        return list(await self._db.execute_fetchall(sql, params))

    async def one(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        rows = await self.all(sql, params)
        return rows[0] if rows else None


class CatalogBase:
    """Connection handling shared by the table mixins that make up `server.catalog.Catalog`."""

    def __init__(self, path: Path, db: aiosqlite.Connection, clock: Callable[[], float]) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = db
        self._clock = clock
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, clock: Callable[[], float] = time.time) -> Self:
        """Open (creating or migrating) the catalog at `path`. CatalogError names the file
        when it cannot be opened, is not a catalog, or is newer than this code."""
        path = Path(path)
        try:
            # Probe with plain sqlite3 first: when aiosqlite.connect fails, its worker thread
            # may report to the event loop after the caller has moved on (or closed the loop).
            await asyncio.to_thread(_probe, path)
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as err:
            raise CatalogError(f"cannot open catalog {path}: {err}") from err
        try:
            db.row_factory = sqlite3.Row
            await _configure(db, path)
            await migrate(db, path, catalog_schema.MIGRATIONS)
        except BaseException:
            await db.close()
            raise
        return cls(path, db, clock)

    async def close(self) -> None:
        async with self._lock:
            if self._db is not None:
                db, self._db = self._db, None
                await db.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise CatalogError(f"catalog {self.path} is closed")
        return self._db

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[Tx]:
        async with self._lock:
            try:
                yield Tx(self._conn(), self._clock())
            except sqlite3.Error as err:
                raise CatalogError(f"catalog {self.path}: {err}") from err

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[Tx]:
        """One write transaction: commits when the block ends, rolls back when it raises."""
        async with self._lock:
            db = self._conn()
            try:
                await db.execute("BEGIN IMMEDIATE")
                yield Tx(db, self._clock())
                await db.execute("COMMIT")
            except BaseException as err:
                # Fails harmlessly when BEGIN failed or COMMIT already went through.
                with contextlib.suppress(sqlite3.Error):
                    await db.execute("ROLLBACK")
                if isinstance(err, sqlite3.Error):
                    raise CatalogError(f"catalog {self.path}: {err}") from err
                raise


def _probe(path: Path) -> None:
    sqlite3.connect(path).close()


async def _configure(db: aiosqlite.Connection, path: Path) -> None:
    try:
        await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # The first statement that reads the file: a file that is no database fails here.
        rows = list(await db.execute_fetchall("PRAGMA journal_mode = WAL"))
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError as err:
        raise CatalogError(f"{path} is not a Stockade catalog (SQLite says: {err})") from err
    mode = rows[0][0] if rows else None
    if mode != "wal":
        raise CatalogError(f"catalog {path}: cannot switch to WAL mode (journal mode {mode!r})")


async def _pragma_int(db: aiosqlite.Connection, name: str) -> int:
    rows = list(await db.execute_fetchall(f"PRAGMA {name}"))
    return int(rows[0][0])


async def migrate(db: aiosqlite.Connection, path: Path, migrations: Sequence[str]) -> int:
    """Bring the catalog to version ``len(migrations)``; returns the version it had.

    Each migration and its user_version bump form one transaction. If another process
    migrated meanwhile, its work is taken as done."""
    known = len(migrations)
    try:
        version = await _pragma_int(db, "user_version")
        app_id = await _pragma_int(db, "application_id")
        tables = list(await db.execute_fetchall("SELECT name FROM sqlite_schema LIMIT 1"))
    except sqlite3.DatabaseError as err:
        raise CatalogError(f"{path} is not a Stockade catalog (SQLite says: {err})") from err
    if version == 0 and tables:
        raise CatalogError(f"{path} is an SQLite database of another program, not a catalog")
    if version > 0 and app_id != catalog_schema.APPLICATION_ID:
        raise CatalogError(f"{path} is an SQLite database of another program, not a catalog")
    if version > known:
        raise CatalogError(
            f"catalog {path} has schema version {version} but this Stockade knows versions"
            f" up to {known}: upgrade Stockade"
        )
    start = version
    for target in range(version + 1, known + 1):
        script = (
            f"BEGIN IMMEDIATE;\n{migrations[target - 1]}\n"
            f"PRAGMA user_version = {target};\nCOMMIT;\n"
        )
        try:
            await db.executescript(script)
        except sqlite3.Error as err:
            with contextlib.suppress(sqlite3.Error):
                await db.execute("ROLLBACK")
            if await _pragma_int(db, "user_version") >= target:
                continue
            raise CatalogError(
                f"catalog {path}: migration to schema version {target} failed: {err}"
            ) from err
        log.info("catalog_migrated", path=str(path), schema_version=target)
    return start
