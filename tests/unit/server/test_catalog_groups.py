"""Protection groups in the catalog: membership rules, whole-or-nothing changes, soft
removal and the schedule state the scheduler reads."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from server.catalog import (
    AgentRow,
    Catalog,
    CatalogValidationError,
    ConflictError,
    DataSourceRow,
    InvalidStateError,
    NotFoundError,
    ProtectionGroupRow,
)
from server.ids import DataSourceId, JobId
from server.policy import DiskPolicy, OnlinePolicy
from storage_pool import RecoveryPoint
from tests.unit.server.catalog_fixture import T0, FakeClock, add_rp_row

HOURLY = DiskPolicy(60, (), 5)
NIGHTLY = DiskPolicy(None, ("22:00",), 30)
ONLINE = OnlinePolicy(True, ("21:00", "23:00"), 7, 4, 3, 1)


async def _agent(catalog: Catalog, hostname: str) -> AgentRow:
    token, _ = await catalog.create_agent_token(600)
    agent, _, _ = await catalog.register_agent(token, None, hostname)
    return agent


async def _sources(catalog: Catalog, n: int, host: str = "web01") -> list[DataSourceRow]:
    agent = await _agent(catalog, host)
    return [await catalog.add_data_source(agent.id, f"ds{i}", [f"/srv/{i}"]) for i in range(n)]


async def _rp(catalog: Catalog, ds: DataSourceRow, created: float) -> RecoveryPoint:
    return await add_rp_row(catalog, ds, created)


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


async def _snapshot(catalog: Catalog) -> tuple[list[ProtectionGroupRow], list[DataSourceRow]]:
    return await catalog.list_groups(include_removed=True), await catalog.list_data_sources()


# -- create and read -------------------------------------------------------------


async def test_create_get_and_list(catalog: Catalog, clock: FakeClock) -> None:
    a, b, c = await _sources(catalog, 3)
    web = await catalog.create_group("web", HOURLY, OnlinePolicy(), [b.id, a.id])
    clock.now += 10
    db = await catalog.create_group("db", NIGHTLY, ONLINE)
    assert web.id.startswith("pg-")
    assert (web.name, web.disk, web.online) == ("web", HOURLY, OnlinePolicy())
    assert web.members == tuple(sorted([a.id, b.id]))
    assert (web.created_at, web.updated_at, web.removed_at) == (T0, T0, None)
    assert await catalog.get_group(web.id) == web
    assert await catalog.get_group("web") == web
    assert (await catalog.get_group("db")).disk == NIGHTLY  # policies survive the JSON
    assert (await catalog.get_group("db")).online == ONLINE
    assert [g.name for g in await catalog.list_groups()] == ["db", "web"]
    assert db.members == ()
    joined = await catalog.get_data_source(a.id)
    assert (joined.protection_group_id, joined.protected_at) == (web.id, T0)
    assert (await catalog.get_data_source(c.id)).protection_group_id is None
    assert [d.id for d in await catalog.group_members("web")] == sorted([a.id, b.id])


async def test_unknown_group(catalog: Catalog) -> None:
    with pytest.raises(NotFoundError, match="protection group 'nope' not found"):
        await catalog.get_group("nope")
    with pytest.raises(NotFoundError, match="protection group 'pg-0123456789'"):
        await catalog.get_group("pg-0123456789")


@pytest.mark.parametrize("name", ["", "a\nb", "x" * 300, "pg-0123456789"])
async def test_bad_group_names_are_refused(catalog: Catalog, name: str) -> None:
    with pytest.raises(CatalogValidationError, match="protection group name"):
        await catalog.create_group(name, HOURLY, OnlinePolicy())
    assert await catalog.list_groups(include_removed=True) == []


async def test_a_taken_name_is_refused(catalog: Catalog) -> None:
    await catalog.create_group("web", HOURLY, OnlinePolicy())
    with pytest.raises(ConflictError, match="a protection group named 'web' exists"):
        await catalog.create_group("web", NIGHTLY, OnlinePolicy())
    assert len(await catalog.list_groups()) == 1


# -- membership rules --------------------------------------------------------------


async def test_a_data_source_belongs_to_at_most_one_group(catalog: Catalog) -> None:
    a, b = await _sources(catalog, 2)
    await catalog.create_group("web", HOURLY, OnlinePolicy(), [a.id])
    before = await _snapshot(catalog)
    with pytest.raises(ConflictError, match="web01:ds0 already belongs to protection group 'web'"):
        await catalog.create_group("other", HOURLY, OnlinePolicy(), [b.id, a.id])
    other = await catalog.create_group("other2", HOURLY, OnlinePolicy())
    with pytest.raises(ConflictError, match="at most one group"):
        await catalog.update_group(other.id, add=[a.id])
    after = await _snapshot(catalog)
    assert [g.name for g in after[0]] == ["other2", "web"]
    assert after[1] == before[1]  # b did not join anything


async def test_unknown_and_removed_data_sources_cannot_join(catalog: Catalog) -> None:
    a, b = await _sources(catalog, 2)
    await catalog.remove_data_source(b.id)
    with pytest.raises(NotFoundError, match="data source 'ds-0000000000'"):
        await catalog.create_group(
            "web", HOURLY, OnlinePolicy(), [a.id, DataSourceId("ds-0000000000")]
        )
    with pytest.raises(InvalidStateError, match="web01:ds1 is removed"):
        await catalog.create_group("web", HOURLY, OnlinePolicy(), [b.id])
    assert await catalog.list_groups(include_removed=True) == []
    assert (await catalog.get_data_source(a.id)).protection_group_id is None


async def test_a_member_listed_twice_is_refused(catalog: Catalog) -> None:
    (a,) = await _sources(catalog, 1)
    with pytest.raises(ConflictError, match="listed twice"):
        await catalog.create_group("web", HOURLY, OnlinePolicy(), [a.id, a.id])
    group = await catalog.create_group("web", HOURLY, OnlinePolicy())
    with pytest.raises(ConflictError, match="listed twice in -AddDataSource"):
        await catalog.update_group(group.id, add=[a.id, a.id])


async def test_a_data_source_of_a_removed_agent_cannot_join(catalog: Catalog) -> None:
    (a,) = await _sources(catalog, 1)
    await catalog.remove_agent(a.agent_id)
    with pytest.raises(InvalidStateError, match="is removed and cannot be protected"):
        await catalog.create_group("web", HOURLY, OnlinePolicy(), [a.id])


# -- update ---------------------------------------------------------------------------


async def test_update_changes_name_policies_and_members(catalog: Catalog, clock: FakeClock) -> None:
    a, b, c = await _sources(catalog, 3)
    group = await catalog.create_group("web", HOURLY, OnlinePolicy(), [a.id, b.id])
    clock.now = T0 + 600
    updated = await catalog.update_group(
        "web", name="www", disk=NIGHTLY, online=ONLINE, add=[c.id], remove=[a.id]
    )
    assert (updated.id, updated.name, updated.disk, updated.online) == (
        group.id,
        "www",
        NIGHTLY,
        ONLINE,
    )
    assert updated.members == tuple(sorted([b.id, c.id]))
    assert (updated.created_at, updated.updated_at) == (T0, T0 + 600)
    left = await catalog.get_data_source(a.id)
    assert (left.protection_group_id, left.protected_at) == (None, None)
    # b stays with the time it joined; c joined now.
    assert (await catalog.get_data_source(b.id)).protected_at == T0
    assert (await catalog.get_data_source(c.id)).protected_at == T0 + 600
    # Nothing given, nothing changed (but the update time).
    again = await catalog.update_group("www")
    assert (again.name, again.disk, again.online, again.members) == (
        "www",
        NIGHTLY,
        ONLINE,
        updated.members,
    )


async def test_a_failed_update_changes_nothing(catalog: Catalog, clock: FakeClock) -> None:
    a, b, c = await _sources(catalog, 3)
    await catalog.create_group("web", HOURLY, OnlinePolicy(), [a.id])
    await catalog.create_group("db", NIGHTLY, OnlinePolicy(), [c.id])
    before = await _snapshot(catalog)
    clock.now += 60
    with pytest.raises(InvalidStateError, match="is not a member of web"):
        await catalog.update_group("web", disk=NIGHTLY, add=[b.id], remove=[c.id])
    with pytest.raises(ConflictError, match="a protection group named 'db' exists"):
        await catalog.update_group("web", name="db", disk=NIGHTLY, add=[b.id])
    with pytest.raises(ConflictError, match="both added and removed"):
        await catalog.update_group("web", add=[a.id], remove=[a.id])
    with pytest.raises(ConflictError, match="already belongs to protection group 'db'"):
        await catalog.update_group("web", online=ONLINE, add=[b.id, c.id])
    with pytest.raises(CatalogValidationError):
        await catalog.update_group("web", name="", disk=NIGHTLY)
    assert await _snapshot(catalog) == before


async def test_adding_a_member_it_already_has_is_a_no_op(catalog: Catalog) -> None:
    (a,) = await _sources(catalog, 1)
    await catalog.create_group("web", HOURLY, OnlinePolicy(), [a.id])
    assert (await catalog.update_group("web", add=[a.id])).members == (a.id,)
    assert (await catalog.get_data_source(a.id)).protected_at == T0


# -- removal ----------------------------------------------------------------------------


async def test_remove_unprotects_members_and_keeps_their_rps(
    tmp_path: Path, catalog: Catalog, clock: FakeClock
) -> None:
    a, b = await _sources(catalog, 2)
    group = await catalog.create_group("web", HOURLY, OnlinePolicy(), [a.id, b.id])
    rp = await _rp(catalog, a, T0 + 5)
    await catalog.record_schedule_slot(a.id, T0 + 3600, None)
    clock.now = T0 + 7200
    removed = await catalog.remove_group("web")
    assert removed.members == tuple(sorted([a.id, b.id]))  # as it was
    assert removed.removed_at is None
    gone = await catalog.get_group(group.id)  # by id, removed ones too
    assert (gone.removed_at, gone.members) == (T0 + 7200, ())
    with pytest.raises(NotFoundError):
        await catalog.get_group("web")
    assert await catalog.list_groups() == []
    assert [g.id for g in await catalog.list_groups(include_removed=True)] == [group.id]
    for ds in (a, b):
        assert (await catalog.get_data_source(ds.id)).protection_group_id is None
    assert [r.id for r in await catalog.list_recovery_points(data_source_id=a.id)] == [rp.id]
    assert _rows(tmp_path / "catalog.sqlite", "SELECT * FROM schedule_state") == []
    with pytest.raises(InvalidStateError, match="protection group web is removed"):
        await catalog.remove_group(group.id)
    with pytest.raises(InvalidStateError, match="protection group web is removed"):
        await catalog.update_group(group.id, disk=NIGHTLY)
    # The name is free again, and the former members may join the new group.
    again = await catalog.create_group("web", NIGHTLY, OnlinePolicy(), [a.id])
    assert again.id != group.id


async def test_a_removed_data_source_leaves_its_group(catalog: Catalog) -> None:
    a, b = await _sources(catalog, 2)
    await catalog.create_group("web", HOURLY, OnlinePolicy(), [a.id, b.id])
    await catalog.remove_data_source(a.id)
    assert (await catalog.get_group("web")).members == (b.id,)
    assert [p.data_source.id for p in await catalog.protected_sources()] == [b.id]


# -- schedule state ---------------------------------------------------------------------


async def test_protected_sources_carry_policy_last_rp_and_last_slot(
    catalog: Catalog, clock: FakeClock
) -> None:
    a, b, c = await _sources(catalog, 3)
    await catalog.create_group("web", HOURLY, OnlinePolicy(), [a.id])
    clock.now = T0 + 100
    await catalog.create_group("db", NIGHTLY, ONLINE, [b.id])
    await _rp(catalog, a, T0 + 10)
    await _rp(catalog, a, T0 + 20)
    await _rp(catalog, c, T0 + 30)  # unprotected: not listed
    await catalog.record_schedule_slot(a.id, T0 + 3600, JobId("job-000000000001"))
    protected = await catalog.protected_sources()
    assert [(p.group_name, p.data_source.id) for p in protected] == [("db", b.id), ("web", a.id)]
    db, web = protected
    assert (db.disk, db.online, db.protected_at, db.last_rp_at, db.last_slot) == (
        NIGHTLY,
        ONLINE,
        T0 + 100,
        None,
        None,
    )
    assert (web.disk, web.protected_at, web.last_rp_at, web.last_slot) == (
        HOURLY,
        T0,
        T0 + 20,
        T0 + 3600,
    )


async def test_schedule_slot_never_moves_back(tmp_path: Path, catalog: Catalog) -> None:
    (a,) = await _sources(catalog, 1)
    await catalog.create_group("web", HOURLY, OnlinePolicy(), [a.id])
    await catalog.record_schedule_slot(a.id, T0 + 7200, JobId("job-000000000002"))
    await catalog.record_schedule_slot(a.id, T0 + 3600, JobId("job-000000000001"))
    assert _rows(tmp_path / "catalog.sqlite", "SELECT * FROM schedule_state") == [
        (a.id, T0 + 7200, "job-000000000002")
    ]
    (p,) = await catalog.protected_sources()
    assert p.last_slot == T0 + 7200


async def test_removed_group_and_agent_are_not_scheduled(catalog: Catalog) -> None:
    (a,) = await _sources(catalog, 1, "web01")
    (b,) = await _sources(catalog, 1, "db01")
    await catalog.create_group("web", HOURLY, OnlinePolicy(), [a.id])
    await catalog.create_group("db", HOURLY, OnlinePolicy(), [b.id])
    await catalog.remove_group("web")
    await catalog.remove_agent(b.agent_id)  # keeps its data: b stays listed, orphaned
    assert await catalog.protected_sources() == []
