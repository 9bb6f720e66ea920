"""The scratch bound (server/scratch_bound.py) and the online slots
(server/online_scheduler.py): pure arithmetic, then the alert on a real catalog."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from server.alerts import AlertCenter
from server.catalog import Catalog
from server.config import ScratchSettings, load_server_config
from server.ids import DataSourceId
from server.online_scheduler import next_online_slot, online_slots_between
from server.policy import OnlinePolicy
from server.retention import DiskRp
from server.scratch_bound import SCRATCH_TOO_SMALL, ScratchGuard, compute_bound, protected_bytes
from storage_pool import RecoveryPointId

GiB = 1 << 30
A, B, C = DataSourceId("ds-a"), DataSourceId("ds-b"), DataSourceId("ds-c")


def rp(name: str, ds: DataSourceId, at: float, size: int) -> DiskRp:
    return DiskRp(RecoveryPointId(name), ds, at, size)


def test_protected_bytes_counts_the_newest_rp_of_protected_sources_only() -> None:
    rps = [
        rp("a1", A, 1, 100 * GiB),
        rp("a2", A, 2, 40 * GiB),  # newest of A: counts, not the bigger older one
        rp("b1", B, 5, 60 * GiB),
        rp("c1", C, 9, 999 * GiB),  # not protected
    ]
    assert protected_bytes(rps, {A, B}) == 100 * GiB


def test_bound_is_a_percentage_with_a_floor_and_a_cap() -> None:
    default = ScratchSettings()
    assert compute_bound(100 * GiB, default) == 5 * GiB
    assert compute_bound(0, default) == GiB  # the floor
    assert compute_bound(100 * GiB, ScratchSettings(bound_percent=10)) == 10 * GiB
    capped = ScratchSettings(max_bytes=2 * GiB)
    assert compute_bound(100 * GiB, capped) == 2 * GiB
    assert compute_bound(0, ScratchSettings(max_bytes=GiB // 2)) == GiB // 2  # override wins


def test_online_slots_in_a_time_zone() -> None:
    tz = ZoneInfo("UTC")
    policy = OnlinePolicy(enabled=True, times=("21:00", "03:30"))
    day = datetime(2026, 3, 2, tzinfo=UTC).timestamp()
    slots = online_slots_between(policy, tz, day, day + 2 * 86400)
    assert [(s - day) / 3600 for s in slots] == [3.5, 21.0, 27.5, 45.0]
    assert online_slots_between(policy, tz, day + 21 * 3600, day + 21 * 3600) == []
    assert next_online_slot(policy, tz, day + 21 * 3600) == day + 27.5 * 3600


async def test_alert_opens_when_the_filesystem_cannot_hold_the_bound(
    tmp_path: Path, catalog: Catalog
) -> None:
    config = load_server_config(None, overrides={"server.data_dir": str(tmp_path / "d")})
    alerts = AlertCenter(catalog, lambda: "")
    capacity = [GiB // 2]
    guard = ScratchGuard(catalog, alerts, lambda: config, capacity=lambda _p: capacity[0])
    try:
        check = await guard.check()
        assert check.bound == GiB and not check.fits
        (alert,) = await catalog.open_alerts_of_kind(SCRATCH_TOO_SMALL)
        assert "online backups need up to 1.00 GiB" in alert.message
        capacity[0] = 2 * GiB
        assert (await guard.check()).fits
        assert await catalog.open_alerts_of_kind(SCRATCH_TOO_SMALL) == []
    finally:
        await alerts.close()
