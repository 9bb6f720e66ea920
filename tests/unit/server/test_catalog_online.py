"""Online RP rows: idempotent adds, soft deletion, the online schedule, and the
disk-retention rule reading them."""

from __future__ import annotations

import pytest

from server.catalog import Catalog, NotFoundError
from server.ids import DataSourceId
from tests.unit.server.catalog_fixture import FakeClock


async def _source(catalog: Catalog) -> DataSourceId:
    token, _ = await catalog.create_agent_token(60)
    agent, _, _ = await catalog.register_agent(token, None, "web01")
    return (await catalog.add_data_source(agent.id, None, ["/srv"])).id


async def test_add_is_idempotent_and_lists_newest_first(catalog: Catalog, clock: FakeClock) -> None:
    ds = await _source(catalog)
    first = await catalog.add_online_rp(
        "data/aa/1",
        ds,
        disk_rp_id="rp1",
        source_created_at=100.0,
        created_at=110.0,
        logical_bytes=5,
    )
    again = await catalog.add_online_rp(
        "data/aa/1",
        ds,
        disk_rp_id="other",
        source_created_at=1.0,
        created_at=2.0,
        logical_bytes=9,
    )
    assert again == first
    await catalog.add_online_rp(
        "data/bb/2",
        ds,
        disk_rp_id="rp2",
        source_created_at=200.0,
        created_at=210.0,
        logical_bytes=7,
        sequence=2,
    )
    assert [r.id for r in await catalog.list_online_rps(ds)] == ["data/bb/2", "data/aa/1"]
    assert [r.id for r in await catalog.online_rps_of_disk_rp("rp2")] == ["data/bb/2"]


async def test_soft_delete_hides_rows_and_stops_covering(
    catalog: Catalog, clock: FakeClock
) -> None:
    ds = await _source(catalog)
    await catalog.add_online_rp(
        "data/aa/1",
        ds,
        disk_rp_id="rp1",
        source_created_at=100.0,
        created_at=110.0,
        logical_bytes=5,
    )
    view = await catalog.retention_view()
    assert view.online_covered_until[ds] == 100.0
    assert await catalog.mark_online_rps_deleted(["data/aa/1", "data/aa/1"]) == 1
    assert await catalog.list_online_rps(ds) == []
    assert [r.deleted_at for r in await catalog.list_online_rps(ds, include_deleted=True)] == [
        clock.now
    ]
    assert ds not in (await catalog.retention_view()).online_covered_until


async def test_unknown_data_source_is_refused(catalog: Catalog) -> None:
    with pytest.raises(NotFoundError):
        await catalog.add_online_rp(
            "data/aa/1",
            DataSourceId("ds-0000000000"),
            disk_rp_id=None,
            source_created_at=1.0,
            created_at=1.0,
            logical_bytes=0,
        )
    with pytest.raises(NotFoundError):
        await catalog.get_online_rp("data/zz/9")


async def test_online_slots_never_move_back(catalog: Catalog) -> None:
    ds = await _source(catalog)
    await catalog.record_online_slot(ds, 500.0)
    await catalog.record_online_slot(ds, 400.0)
    assert await catalog.online_slots() == {ds: 500.0}
