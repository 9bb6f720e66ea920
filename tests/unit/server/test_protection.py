"""Destructive group operations over a real catalog and a real storage pool: the PIN
rules, deleting data (catalog row, then pool record) and healing a crash between them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent import protocol as p
from server.catalog import (
    AgentRow,
    Catalog,
    CatalogValidationError,
    DataSourceRow,
    InvalidStateError,
    JobKind,
    JobState,
    NotFoundError,
    RecoveryPointRow,
    SecurityPinError,
    recovery_point_labels,
)
from server.ids import AgentId, DataSourceId
from server.jobs import JobLimits, JobManager
from server.policy import DiskPolicy, OnlinePolicy
from server.protection import (
    GroupChange,
    backup_group,
    delete_data_of,
    expiring_recovery_points,
    remove_group,
    resolve_members,
    update_group,
)
from storage_pool import RecoveryPoint, RecoveryPointId, StoragePool
from tests.unit.pool.file_backup import file_entries
from tests.unit.pool.pool_opener import PoolOpener
from tests.unit.server.catalog_fixture import T0, FakeClock, add_rp_row

DAY = 86400.0


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[StoragePool]:
    opener = PoolOpener(tmp_path)
    try:
        yield await opener.create()
    finally:
        await opener.close_all()
        await opener.remove_all()


async def _source(catalog: Catalog, host: str, name: str = "srv") -> tuple[AgentRow, DataSourceRow]:
    token, _ = await catalog.create_agent_token(600)
    agent, _, _ = await catalog.register_agent(token, None, host)
    return agent, await catalog.add_data_source(agent.id, name, [f"/{name}"])


async def _backup(
    catalog: Catalog, pool: StoragePool, agent: AgentRow, ds: DataSourceRow
) -> RecoveryPoint:
    """A committed backup: a pool RP with its labels, and its catalog row. The pool
    stamps it with the real time; tests move the catalog's clock from there."""
    job = await catalog.create_job(JobKind.BACKUP, agent.id, ds.id, {})
    await catalog.transition_job(job.id, JobState.RUNNING)
    pieces = [ds.id.encode() * 100]
    async with pool.session(ds.id) as session:
        await session.put_data(pieces)
        await session.add_entries(file_entries({b"file": pieces}))
        rp = await session.commit(recovery_point_labels(agent, ds, job.id))
    await catalog.add_recovery_point(rp)
    await catalog.transition_job(job.id, JobState.SUCCEEDED, result={"rp_id": rp.id})
    return rp


async def _rp_row(catalog: Catalog, agent: AgentRow, ds: DataSourceRow, created: float) -> None:
    """An RP row only (no pool record): enough for the rules that read its age."""
    assert ds.agent_id == agent.id
    await add_rp_row(catalog, ds, created)


async def _pool_ids(pool: StoragePool) -> set[str]:
    return {rp.id for rp in await pool.list_recovery_points()}


def _row(rp_id: str, created: float) -> RecoveryPointRow:
    return RecoveryPointRow(
        id=RecoveryPointId(rp_id),
        data_source_id=A,
        agent_id=AgentId("ag"),
        created_at=created,
        job_id=None,
        entries=1,
        files=1,
        logical_bytes=1,
        labels={},
    )


A, B = DataSourceId("ds-a"), DataSourceId("ds-b")


def _days(n: int) -> DiskPolicy:
    return DiskPolicy(retention_days=n)


# -- which RPs a change makes expire ------------------------------------------------


def test_expiring_rps_of_a_shorter_retention() -> None:
    now = T0 + 10 * DAY
    old, young = _row("old", now - 3 * DAY - 1), _row("young", now - DAY)
    staying = {A: [old, young]}
    assert expiring_recovery_points(_days(5), _days(2), staying, {}, now) == [old]
    assert expiring_recovery_points(_days(5), _days(3), staying, {}, now) == [old]
    # Shorter, but still longer than every RP's age; or not shorter at all.
    assert expiring_recovery_points(_days(5), _days(4), staying, {}, now) == []
    assert expiring_recovery_points(_days(5), _days(10), staying, {}, now) == []
    assert expiring_recovery_points(_days(5), _days(5), staying, {}, now) == []


def test_expiring_rps_of_an_added_member() -> None:
    now = T0 + 10 * DAY
    old = _row("old", now - 6 * DAY)
    assert expiring_recovery_points(_days(5), _days(5), {}, {B: [old]}, now) == [old]
    assert expiring_recovery_points(_days(5), _days(7), {}, {B: [old]}, now) == []


# -- set: a PIN when RPs would expire ------------------------------------------------------


async def test_shorter_retention_with_older_rps_needs_a_pin(
    catalog: Catalog, clock: FakeClock
) -> None:
    agent, ds = await _source(catalog, "web01")
    await catalog.create_group("web", DiskPolicy(retention_days=10), OnlinePolicy(), [ds.id])
    await _rp_row(catalog, agent, ds, T0)
    clock.now = T0 + 3 * DAY
    before = await catalog.get_group("web")
    shorter = GroupChange(disk={"retention_days": 2})
    for pin, message in [
        (None, "security PIN is missing: run New-SecurityPin"),
        ("00000000", "security PIN is wrong or was already used"),
    ]:
        with pytest.raises(SecurityPinError, match=message) as info:
            await update_group(catalog, "web", shorter, pin, clock.now)
        assert "a disk retention of 2 days would make 1 recovery point(s) of web expire" in str(
            info.value
        )
        assert await catalog.get_group("web") == before
    # Shorter, but not shorter than the RP's age: no PIN.
    assert (
        await update_group(catalog, "web", GroupChange(disk={"retention_days": 4}), None, clock.now)
    ).disk.retention_days == 4
    pin, _ = await catalog.new_security_pin()
    changed = await update_group(catalog, "web", shorter, pin, clock.now)
    assert changed.disk.retention_days == 2
    with pytest.raises(SecurityPinError, match="already used"):
        await catalog.use_security_pin(pin, "again")


async def test_longer_retention_and_renames_need_no_pin(catalog: Catalog, clock: FakeClock) -> None:
    agent, ds = await _source(catalog, "web01")
    await catalog.create_group("web", DiskPolicy(retention_days=2), OnlinePolicy(), [ds.id])
    await _rp_row(catalog, agent, ds, T0)
    clock.now = T0 + 30 * DAY
    change = GroupChange(name="www", disk={"retention_days": 3, "sync_frequency_minutes": 30})
    changed = await update_group(catalog, "web", change, None, clock.now)
    assert (changed.name, changed.disk) == ("www", DiskPolicy(30, (), 3))


async def test_adding_a_source_with_older_rps_needs_a_pin(
    catalog: Catalog, clock: FakeClock
) -> None:
    agent, ds = await _source(catalog, "web01")
    await _rp_row(catalog, agent, ds, T0)
    await catalog.create_group("web", DiskPolicy(retention_days=5), OnlinePolicy())
    clock.now = T0 + 6 * DAY
    with pytest.raises(SecurityPinError, match="missing"):
        await update_group(catalog, "web", GroupChange(add=[ds.ref]), None, clock.now)
    assert (await catalog.get_group("web")).members == ()
    pin, _ = await catalog.new_security_pin()
    added = await update_group(catalog, "web", GroupChange(add=[ds.ref]), pin, clock.now)
    assert added.members == (ds.id,)


async def test_invalid_input_is_refused_before_the_pin_is_used(
    catalog: Catalog, clock: FakeClock
) -> None:
    agent, ds = await _source(catalog, "web01")
    await catalog.create_group("web", DiskPolicy(retention_days=10), OnlinePolicy(), [ds.id])
    await _rp_row(catalog, agent, ds, T0)
    clock.now = T0 + 3 * DAY
    pin, _ = await catalog.new_security_pin()
    with pytest.raises(ValueError, match="use 1 to 448 days"):
        await update_group(catalog, "web", GroupChange(disk={"retention_days": 0}), pin, clock.now)
    with pytest.raises(CatalogValidationError, match="unknown data source 'web01:nope'"):
        change = GroupChange(disk={"retention_days": 1}, add=["web01:nope"])
        await update_group(catalog, "web", change, pin, clock.now)
    await catalog.use_security_pin(pin, "still valid")


async def test_resolve_members_by_ref_and_id(catalog: Catalog) -> None:
    _, ds = await _source(catalog, "web01")
    assert await resolve_members(catalog, ["web01:srv", ds.id]) == [ds.id, ds.id]
    with pytest.raises(CatalogValidationError, match="use agent:name or a data source id"):
        await resolve_members(catalog, ["srv"])


# -- remove with or without the data ---------------------------------------------------------


async def test_remove_keeps_data_or_with_a_pin_deletes_it_from_catalog_and_pool(
    catalog: Catalog, pool: StoragePool
) -> None:
    agent, ds = await _source(catalog, "web01")
    other_agent, other = await _source(catalog, "db01")
    await catalog.create_group("web", DiskPolicy(), OnlinePolicy(), [ds.id])
    await catalog.create_group("db", DiskPolicy(), OnlinePolicy(), [other.id])
    mine = {(await _backup(catalog, pool, agent, ds)).id for _ in range(2)}
    kept = await _backup(catalog, pool, other_agent, other)
    # Keeping the data needs no PIN and leaves every RP where it was.
    group, deleted = await remove_group(catalog, pool, "db", delete_data=False, pin=None)
    assert (group.name, deleted) == ("db", [])
    assert await _pool_ids(pool) == mine | {kept.id}
    for pin in (None, "12345678"):
        with pytest.raises(SecurityPinError):
            await remove_group(catalog, pool, "web", delete_data=True, pin=pin)
        assert (await catalog.get_group("web")).members == (ds.id,)
        assert await _pool_ids(pool) == mine | {kept.id}
    pin, _ = await catalog.new_security_pin()
    group, deleted = await remove_group(catalog, pool, "web", delete_data=True, pin=pin)
    assert set(deleted) == mine
    assert [r.id for r in await catalog.list_recovery_points()] == [kept.id]
    assert await _pool_ids(pool) == {kept.id}
    assert (await catalog.get_group(group.id)).removed_at is not None


async def test_a_crash_between_catalog_and_pool_is_healed_by_the_rebuild(
    catalog: Catalog, pool: StoragePool
) -> None:
    """The catalog row goes first: a crash before the pool record follows leaves an RP
    only in the pool; the start-up rebuild brings its row back and the next deletion
    removes both."""
    agent, ds = await _source(catalog, "web01")
    rp = await _backup(catalog, pool, agent, ds)
    assert await catalog.remove_recovery_point(rp.id)  # ... and the server dies here
    assert await _pool_ids(pool) == {rp.id}
    report = await catalog.rebuild_from_pool(await pool.list_recovery_points())
    assert report.recovery_points_added == 1
    assert await delete_data_of(catalog, pool, [ds.id]) == [rp.id]
    assert await catalog.list_recovery_points() == []
    assert await _pool_ids(pool) == set()


# -- a backup of every member ----------------------------------------------------------------


async def _no_publish(topic: str, msg: p.Message) -> None:
    raise AssertionError(f"starting jobs publishes nothing; the tick dispatches ({topic})")


async def test_group_backup_starts_one_job_per_member_and_skips_active_ones(
    catalog: Catalog, clock: FakeClock
) -> None:
    agent, ds1 = await _source(catalog, "web01", "one")
    ds2 = await catalog.add_data_source(agent.id, "two", ["/two"])
    ds3 = await catalog.add_data_source(agent.id, "three", ["/three"])
    await catalog.create_group("web", DiskPolicy(), OnlinePolicy(), [ds1.id, ds2.id, ds3.id])
    await catalog.create_group("empty", DiskPolicy(), OnlinePolicy())
    jobs = JobManager(catalog, _no_publish, JobLimits(), clock=clock)
    busy = await jobs.start_backup(ds2.id)
    done = await backup_group(catalog, jobs, "web")
    assert done.group.name == "web"
    assert sorted(str(j.data_source_id) for j in done.jobs) == sorted([ds1.id, ds3.id])
    assert [(ds.id, reason) for ds, reason in done.skipped] == [
        (ds2.id, f"data source web01:two: a backup of it is already queued (job {busy.id})")
    ]
    again = await backup_group(catalog, jobs, "web")
    assert again.jobs == [] and len(again.skipped) == 3
    with pytest.raises(InvalidStateError, match="protection group empty has no data sources"):
        await backup_group(catalog, jobs, "empty")
    await catalog.remove_group("web")
    with pytest.raises(NotFoundError):
        await backup_group(catalog, jobs, "web")
