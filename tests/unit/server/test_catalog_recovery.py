"""Recovery points in the catalog, and rebuilding a lost catalog from a real storage pool."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from server.catalog import (
    AgentRow,
    Catalog,
    CatalogValidationError,
    DataSourceRow,
    JobKind,
    JobState,
    NotFoundError,
    recovery_point_labels,
)
from storage_pool import RecoveryPoint, StoragePool
from storage_pool.ids import new_recovery_point_id
from tests.unit.pool.file_backup import file_entries
from tests.unit.pool.pool_opener import PoolOpener
from tests.unit.server.catalog_fixture import T0, FakeClock, opened


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[StoragePool]:
    opener = PoolOpener(tmp_path)
    try:
        yield await opener.create()
    finally:
        await opener.close_all()
        await opener.remove_all()  # 4096 shard directories: do not leave them behind


def _record(labels: dict[str, str], data_source: str = "ds", created_ns: int = 0) -> RecoveryPoint:
    """An RP record as the pool returns it, for tests that need no chunks behind it."""
    return RecoveryPoint(
        id=new_recovery_point_id(datetime.fromtimestamp(T0, UTC)),
        data_source=data_source,
        created_ns=created_ns or int(T0 * 1e9),
        manifest_chunks=(),
        manifest_bytes=0,
        entries=1,
        files=1,
        logical_bytes=5,
        labels=labels,
    )


async def _agent(catalog: Catalog, hostname: str) -> tuple[AgentRow, str]:
    token, _ = await catalog.create_agent_token(600)
    agent, secret, _ = await catalog.register_agent(token, None, hostname)
    return agent, secret


async def _backup(
    catalog: Catalog, pool: StoragePool, agent: AgentRow, ds: DataSourceRow, data: bytes
) -> RecoveryPoint:
    """A backup as the server runs it: job, pool session committed with labels, RP row."""
    job = await catalog.create_job(JobKind.BACKUP, agent.id, ds.id, {})
    await catalog.transition_job(job.id, JobState.RUNNING)
    pieces = [data]
    async with pool.session(ds.id) as session:
        await session.put_data(pieces)
        await session.add_entries(file_entries({b"file": pieces}))
        rp = await session.commit(recovery_point_labels(agent, ds, job.id))
    await catalog.add_recovery_point(rp)
    await catalog.transition_job(job.id, JobState.SUCCEEDED, result={"rp_id": rp.id})
    return rp


def _lose(path: Path) -> None:
    """The catalog is gone: its file and the WAL and shared-memory files beside it."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def test_add_recovery_point_is_idempotent(tmp_path: Path) -> None:
    async with opened(tmp_path / "catalog.sqlite") as catalog:
        agent, _ = await _agent(catalog, "web01")
        ds = await catalog.add_data_source(agent.id, None, ["/srv"])
        job = await catalog.create_job(JobKind.BACKUP, agent.id, ds.id, {})
        rp = _record(recovery_point_labels(agent, ds, job.id))
        await catalog.add_recovery_point(rp)
        row = await catalog.get_recovery_point(rp.id)
        assert await catalog.add_recovery_point(rp) == row
        assert (row.data_source_id, row.agent_id, row.entries, row.files) == (
            ds.id,
            agent.id,
            1,
            1,
        )
        assert row.created_at == rp.created_ns / 1e9
        assert row.job_id == rp.labels["job_id"]
        assert row.labels == rp.labels
        assert (await catalog.get_agent(agent.id)).last_backup_at == row.created_at
        assert await catalog.list_recovery_points(agent_id=agent.id) == [row]
        assert await catalog.list_recovery_points(data_source_id=ds.id) == [row]
        assert await catalog.remove_recovery_point(rp.id)
        assert not await catalog.remove_recovery_point(rp.id)
        with pytest.raises(NotFoundError, match=f"recovery point '{rp.id}'"):
            await catalog.get_recovery_point(rp.id)
        # Removing an RP does not move the time of the last backup back.
        assert (await catalog.get_agent(agent.id)).last_backup_at == row.created_at


async def test_add_recovery_point_needs_its_data_source(tmp_path: Path) -> None:
    unlabelled = _record({})
    async with opened(tmp_path / "catalog.sqlite") as catalog:
        with pytest.raises(CatalogValidationError, match="names no data source"):
            await catalog.add_recovery_point(unlabelled)
        with pytest.raises(NotFoundError, match="data source 'ds-0123456789'"):
            await catalog.add_recovery_point(
                unlabelled,
                data_source_id="ds-0123456789",  # type: ignore[arg-type]
            )


async def test_remove_data_source_with_data_returns_the_rps_to_delete(tmp_path: Path) -> None:
    async with opened(tmp_path / "catalog.sqlite") as catalog:
        agent, _ = await _agent(catalog, "web01")
        ds = await catalog.add_data_source(agent.id, None, ["/srv"])
        rps = [_record(recovery_point_labels(agent, ds, None)) for _ in range(2)]
        for rp in rps:
            await catalog.add_recovery_point(rp)
        dropped = await catalog.remove_data_source(ds.id, delete_data=True)
        assert sorted(dropped) == sorted(rp.id for rp in rps)
        assert await catalog.list_recovery_points() == []


async def test_rebuild_a_lost_catalog_from_the_pool(tmp_path: Path, pool: StoragePool) -> None:
    """The pool alone restores agents, data sources and RPs (DESIGN.md: "the catalog can be
    rebuilt from the pool alone"); credentials cannot come back, so rebuilt agents must
    register again."""
    path = tmp_path / "catalog.sqlite"
    clock = FakeClock()
    async with opened(path, clock) as catalog:
        web, web_secret = await _agent(catalog, "web01")
        db, _ = await _agent(catalog, "db01")
        srv = await catalog.add_data_source(web.id, None, ["/srv", "/etc"], ["*.tmp"])
        home = await catalog.add_data_source(web.id, "home", ["/home"])
        pg = await catalog.add_data_source(db.id, None, ["/var/lib/postgresql"])
        for i, (agent, ds) in enumerate([(web, srv), (web, srv), (web, home), (db, pg)]):
            clock.now = T0 + i
            await _backup(catalog, pool, agent, ds, f"data {i}".encode())
        before_rps = await catalog.list_recovery_points()
        before_sources = await catalog.list_data_sources()
        before_agents = await catalog.list_agents()
    async with pool.session("not-from-the-server") as session:
        await session.commit({"note": "no catalog labels"})
    _lose(path)

    async with opened(path, clock) as catalog:
        # Before the rebuild a new machine took the name web01: the rebuilt one yields.
        newcomer, _ = await _agent(catalog, "web01")
        report = await catalog.rebuild_from_pool(await pool.list_recovery_points())
        assert dataclasses.astuple(report) == (2, 3, 4, 1)

        assert await catalog.list_recovery_points() == before_rps
        by_id = {ds.id: ds for ds in await catalog.list_data_sources()}
        for old in before_sources:
            new = by_id[old.id]
            assert (new.agent_id, new.name, new.kind, new.spec) == (
                old.agent_id,
                old.name,
                old.kind,
                old.spec,
            )
        agents = {a.id: a for a in await catalog.list_agents()}
        assert agents[newcomer.id].name == "web01"
        assert agents[web.id].name == "web01-2"
        assert agents[db.id].name == "db01"
        for old_agent in before_agents:
            rebuilt = agents[old_agent.id]
            assert rebuilt.needs_registration
            assert rebuilt.command_key is None
            assert rebuilt.last_backup_at == old_agent.last_backup_at
        assert await catalog.authenticate_agent(web.id, web_secret) is None

        # Idempotent: a second rebuild finds everything present.
        again = await catalog.rebuild_from_pool(await pool.list_recovery_points())
        assert dataclasses.astuple(again) == (0, 0, 0, 1)

        # The rebuilt agent registers again under its old id and gets a new credential.
        token, _ = await catalog.create_agent_token(600)
        back, secret, _ = await catalog.register_agent(token, None, "web01", agent_id=web.id)
        assert (back.id, back.name, back.needs_registration) == (web.id, "web01-2", False)
        assert await catalog.authenticate_agent(web.id, secret) == back
        with pytest.raises(Exception, match="only an agent rebuilt from the pool"):
            await catalog.register_agent(token, None, "web01", agent_id=web.id)


async def test_rebuild_of_an_intact_catalog_changes_nothing(tmp_path: Path) -> None:
    async with opened(tmp_path / "catalog.sqlite") as catalog:
        agent, secret = await _agent(catalog, "web01")
        ds = await catalog.add_data_source(agent.id, None, ["/srv"])
        rp = _record(recovery_point_labels(agent, ds, None))
        await catalog.add_recovery_point(rp)
        before = (await catalog.list_agents(), await catalog.list_data_sources())
        report = await catalog.rebuild_from_pool([rp])
        assert dataclasses.astuple(report) == (0, 0, 0, 0)
        assert (await catalog.list_agents(), await catalog.list_data_sources()) == before
        assert await catalog.authenticate_agent(agent.id, secret) is not None


async def test_rebuild_skips_rps_with_bad_labels_and_keeps_bad_specs(tmp_path: Path) -> None:
    """RPs made outside the server (no labels) or with broken labels are skipped, never
    guessed at; a spec that does not parse still gets its data source back, empty."""
    good = {"agent_id": "a1", "data_source_id": "ds-00000000aa", "agent_name": "a1"}
    bad_labels = [
        {"agent_id": "a/1", "data_source_id": "ds-00000000aa"},  # not an agent id
        {"agent_id": "a1", "data_source_id": "nope"},  # not a data source id
        {**good, "kind": "volume"},  # unknown kind
        {**good, "job_id": "42"},  # not a job id
    ]
    rps = [_record(labels) for labels in [{}, *bad_labels, {**good, "spec": "{not json"}]]
    async with opened(tmp_path / "catalog.sqlite") as catalog:
        report = await catalog.rebuild_from_pool(rps)
        assert dataclasses.astuple(report) == (1, 1, 1, 5)
        ds = await catalog.get_data_source("a1:ds")
        assert ds.spec == {"paths": [], "excludes": []}
