"""The disk-retention rule: pure cases to the second, then the catalog's view of it."""

from __future__ import annotations

from pathlib import Path

from server.catalog import Catalog, JobKind, JobState
from server.ids import DataSourceId
from server.policy import DiskPolicy, OnlinePolicy
from server.retention import DiskRp, RetentionView, SourcePolicy, prunable
from storage_pool import RecoveryPointId
from tests.unit.server.catalog_fixture import T0, FakeClock
from tests.unit.server.schedule_fixture import DAY, add_rp, world_at

A = DataSourceId("ds-00000000aa")
B = DataSourceId("ds-00000000bb")
FIVE_DAYS = SourcePolicy(DiskPolicy(retention_days=5), OnlinePolicy())
WITH_ONLINE = SourcePolicy(DiskPolicy(retention_days=5), OnlinePolicy(enabled=True))


def rp(name: str, ds: DataSourceId, created_at: float) -> DiskRp:
    return DiskRp(RecoveryPointId(name), ds, created_at)


def ids(view: RetentionView, now: float) -> list[str]:
    return [r.id for r in prunable(view, now)]


def test_expiry_is_exact_to_the_second() -> None:
    view = RetentionView([rp("old", A, T0), rp("new", A, T0 + DAY)], {A: FIVE_DAYS})
    assert ids(view, T0 + 5 * DAY - 1) == []
    assert ids(view, T0 + 5 * DAY) == ["old"]


def test_the_newest_rp_is_never_pruned() -> None:
    only = RetentionView([rp("only", A, T0)], {A: FIVE_DAYS})
    assert ids(only, T0 + 400 * DAY) == []
    # All expired: all but the newest go, whatever order they come in.
    rps = [rp("c", A, T0 + 2), rp("a", A, T0), rp("b", A, T0 + 1)]
    assert ids(RetentionView(rps, {A: FIVE_DAYS}), T0 + 400 * DAY) == ["a", "b"]


def test_rps_of_unprotected_data_sources_are_kept() -> None:
    view = RetentionView([rp("a1", A, T0), rp("a2", A, T0 + 1)], {B: FIVE_DAYS})
    assert ids(view, T0 + 400 * DAY) == []


def test_online_protection_keeps_an_expired_rp_until_an_online_rp_covers_it() -> None:
    rps = [rp("a1", A, T0), rp("a2", A, T0 + DAY), rp("a3", A, T0 + 2 * DAY)]
    now = T0 + 10 * DAY
    assert ids(RetentionView(rps, {A: WITH_ONLINE}), now) == []
    just_before = RetentionView(rps, {A: WITH_ONLINE}, {A: T0 - 1})
    assert ids(just_before, now) == []
    covers_first = RetentionView(rps, {A: WITH_ONLINE}, {A: T0})
    assert ids(covers_first, now) == ["a1"]
    covers_all = RetentionView(rps, {A: WITH_ONLINE}, {A: T0 + 2 * DAY})
    assert ids(covers_all, now) == ["a1", "a2"]  # the newest stays regardless
    # Another data source's online RP covers nothing here.
    assert ids(RetentionView(rps, {A: WITH_ONLINE}, {B: now}), now) == []


def test_an_rp_an_active_restore_reads_is_kept() -> None:
    rps = [rp("a1", A, T0), rp("a2", A, T0 + 1), rp("a3", A, T0 + 2)]
    view = RetentionView(rps, {A: FIVE_DAYS}, in_use=frozenset({RecoveryPointId("a1")}))
    assert ids(view, T0 + 6 * DAY) == ["a2"]


async def test_catalog_view_feeds_the_rule(tmp_path: Path, clock: FakeClock) -> None:
    online = OnlinePolicy(enabled=True)
    async with world_at(tmp_path, clock, members=2, spare=1, online=online) as w:
        ds0, ds1, _spare = w.sources
        old0 = await add_rp(w, 0, T0 - 10 * DAY)
        await add_rp(w, 0, T0 - DAY)
        old1 = await add_rp(w, 1, T0 - 10 * DAY)
        await add_rp(w, 1, T0 - DAY)
        await add_rp(w, 2, T0 - 10 * DAY)
        await add_rp(w, 2, T0 - DAY)
        await _online_rp(w.catalog, ds0.id, T0 - 10 * DAY, deleted=False)
        await _online_rp(w.catalog, ds1.id, T0 - 5 * DAY, deleted=True)
        restore = await w.catalog.create_job(
            JobKind.RESTORE, w.agent_id, None, {"rp_id": old1.id, "items": []}
        )
        view = await w.catalog.retention_view()
        assert set(view.policies) == {ds0.id, ds1.id}
        assert view.online_covered_until == {ds0.id: T0 - 10 * DAY}
        assert view.in_use == {old1.id}
        # ds1's old RP: its online RP is deleted (and a restore reads it); the spare data
        # source is not protected. Only ds0's covered old RP goes.
        assert [r.id for r in prunable(view, T0)] == [old0.id]
        await w.catalog.transition_job(restore.id, JobState.CANCELLED)
        assert (await w.catalog.retention_view()).in_use == frozenset()
        await w.catalog.remove_group("pg")
        assert prunable(await w.catalog.retention_view(), T0) == []


async def _online_rp(
    catalog: Catalog, ds_id: str, source_created_at: float, *, deleted: bool
) -> None:
    # The cloud tier writes these rows; it is not built yet, so the test writes one as it
    # will (schema v2, table online_recovery_points).
    async with catalog._write() as tx:
        await tx.run(
            "INSERT INTO online_recovery_points (id, data_source_id, disk_rp_id,"
            " source_created_at, created_at, deleted_at) VALUES (?, ?, NULL, ?, ?, ?)",
            (
                f"orp-{ds_id}-{source_created_at}",
                ds_id,
                source_created_at,
                tx.now,
                tx.now if deleted else None,
            ),
        )
