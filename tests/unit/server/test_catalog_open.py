"""Opening the catalog: migrations, pragmas, and refusing files that are not ours."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

import pytest

from server import catalog_schema
from server.catalog import Catalog, CatalogError, ConflictError, JobKind, JobState
from server.catalog_rows import JobTrigger
from server.ids import AgentId, DataSourceId
from tests.unit.server.catalog_fixture import FakeClock, opened


def _pragma(path: Path, name: str) -> object:
    with sqlite3.connect(path) as db:
        return db.execute(f"PRAGMA {name}").fetchone()[0]


async def test_new_file_gets_every_migration_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    async with opened(path) as catalog:
        token, _ = await catalog.create_agent_token(60)
        agent, _, _ = await catalog.register_agent(token, None, "web01")
    assert _pragma(path, "user_version") == catalog_schema.SCHEMA_VERSION
    assert _pragma(path, "application_id") == catalog_schema.APPLICATION_ID
    assert _pragma(path, "journal_mode") == "wal"
    async with opened(path) as catalog:
        assert (await catalog.get_agent("web01")).id == agent.id


async def test_empty_file_is_migrated(tmp_path: Path) -> None:
    """A zero-byte file is an empty SQLite database: it becomes a catalog."""
    path = tmp_path / "catalog.sqlite"
    path.touch()
    async with opened(path) as catalog:
        assert await catalog.list_agents() == []
    assert _pragma(path, "user_version") == catalog_schema.SCHEMA_VERSION


async def test_connection_pragmas(tmp_path: Path) -> None:
    """Guards the durability choice: synchronous=FULL (2) because credentials live only
    here, foreign keys enforced."""
    async with opened(tmp_path / "c.sqlite") as catalog, catalog._read() as tx:
        assert (await tx.one("PRAGMA synchronous"))[0] == 2  # type: ignore[index]
        assert (await tx.one("PRAGMA foreign_keys"))[0] == 1  # type: ignore[index]
        assert (await tx.one("PRAGMA busy_timeout"))[0] == 5000  # type: ignore[index]


async def test_newer_catalog_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    async with opened(path):
        pass
    newer = catalog_schema.SCHEMA_VERSION + 1
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {newer}")
    with pytest.raises(CatalogError, match="upgrade Stockade") as info:
        await Catalog.open(path)
    assert str(path) in str(info.value)
    assert f"schema version {newer}" in str(info.value)


async def test_garbage_file_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    path.write_bytes(b"this is not a database, just some bytes\n" * 200)
    with pytest.raises(CatalogError, match="not a Stockade catalog") as info:
        await Catalog.open(path)
    assert str(path) in str(info.value)
    assert path.read_bytes().startswith(b"this is not a database")  # left untouched


async def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
    with pytest.raises(CatalogError, match="another program") as info:
        await Catalog.open(path)
    assert str(path) in str(info.value)


async def test_missing_directory_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "catalog.sqlite"
    with pytest.raises(CatalogError, match="cannot open catalog") as info:
        await Catalog.open(path)
    assert str(path) in str(info.value)


async def test_failed_migration_leaves_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration and its user_version bump are one transaction: a migration that fails
    half-way leaves neither its first statements nor a new version behind."""
    path = tmp_path / "catalog.sqlite"
    async with opened(path):
        pass
    broken = "CREATE TABLE half_done (x INTEGER); INSERT INTO no_such_table VALUES (1);"
    monkeypatch.setattr(catalog_schema, "MIGRATIONS", [*catalog_schema.MIGRATIONS, broken])
    broken_version = catalog_schema.SCHEMA_VERSION + 1
    with pytest.raises(
        CatalogError, match=f"migration to schema version {broken_version} failed"
    ) as info:
        await Catalog.open(path)
    assert str(path) in str(info.value)
    assert _pragma(path, "user_version") == broken_version - 1
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_schema")}
    assert "half_done" not in tables
    assert "jobs" in tables


async def test_closed_catalog_says_so(tmp_path: Path) -> None:
    catalog = await Catalog.open(tmp_path / "c.sqlite", clock=FakeClock())
    await catalog.close()
    await catalog.close()  # idempotent
    with pytest.raises(CatalogError, match="is closed"):
        await catalog.list_agents()


def test_only_the_catalog_imports_aiosqlite() -> None:
    """DESIGN.md: the catalog is the only place that imports aiosqlite (here: its connection
    module), so SQLite access cannot spread through the server."""
    root = Path(__file__).resolve().parents[3]
    importers = []
    for package in ("server", "agent", "storage_pool"):
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                if any(n.split(".")[0] == "aiosqlite" for n in names):
                    importers.append(str(path.relative_to(root)))
    assert importers == ["server/catalog_base.py"]


async def test_version_1_catalog_keeps_its_jobs_when_migrated(tmp_path: Path) -> None:
    """Version 2 rebuilds `jobs` (SQLite cannot relax NOT NULL in place): every row of a
    version-1 catalog comes through with the new columns at their defaults."""
    path = tmp_path / "catalog.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(catalog_schema.MIGRATIONS[0] + "\nPRAGMA user_version = 1;")
        db.execute(
            "INSERT INTO agents (id, name, hostname, credential_hash, created_at)"
            " VALUES ('a1b2c3d4e5f6', 'web01', 'web01', 'h', 1)"
        )
        db.execute(
            "INSERT INTO data_sources (id, agent_id, name, kind, spec, created_at)"
            " VALUES ('ds-0123456789', 'a1b2c3d4e5f6', '/srv', 'files', '{}', 1)"
        )
        db.execute(
            "INSERT INTO jobs (id, kind, state, agent_id, data_source_id, params, progress,"
            " created_at, updated_at) VALUES ('job-0123456789ab', 'backup', 'queued',"
            " 'a1b2c3d4e5f6', 'ds-0123456789', '{\"x\": 1}', '{}', 2, 2)"
        )
    async with opened(path) as catalog:
        job = await catalog.get_job("job-0123456789ab")
        assert (job.kind, job.state, job.agent_id, job.params) == (
            JobKind.BACKUP,
            JobState.QUEUED,
            "a1b2c3d4e5f6",
            {"x": 1},
        )
        assert (job.trigger, job.attempt, job.retryable) == (JobTrigger.MANUAL, 1, False)
        assert (await catalog.get_data_source("ds-0123456789")).protection_group_id is None
        # The partial unique index came back with the table.
        with pytest.raises(ConflictError):
            await catalog.create_job(
                JobKind.BACKUP, AgentId("a1b2c3d4e5f6"), DataSourceId("ds-0123456789"), {}
            )
    assert _pragma(path, "user_version") == catalog_schema.SCHEMA_VERSION
