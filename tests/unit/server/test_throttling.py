"""Upload throttling (server/throttling.py): the setting's checks and persistence in a real
catalog, and the online-backup runner's uploads going through the configured bucket (a
real pool and folder vault; the bucket runs on a fake clock, so nothing is timed)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from server.catalog import Catalog, JobState
from server.online_backup import OnlineBackupRunner
from server.scratch_bound import ScratchGuard
from server.throttling import (
    DEFAULT_SETTING,
    THROTTLING_KEY,
    ScheduledThrottle,
    ThrottleSetting,
    ThrottleSettingError,
    format_rate,
    load_setting,
    parse_hour,
    parse_rate,
    update_setting,
)
from storage_pool.vault.throttle import MIN_RATE_BPS
from tests.unit.pool.pool_opener import PoolOpener
from tests.unit.server.catalog_fixture import FakeClock
from tests.unit.server.cloud_fixture import (
    MiB,
    agent_and_source,
    backup,
    new_vault,
    online_config,
    register,
    site,
)


def test_rates_take_mars_units() -> None:
    assert parse_rate("512Kbps", "work-hour") == 512_000
    assert parse_rate("10 Mbps", "work-hour") == 10_000_000
    assert parse_rate("1.5mbps", "work-hour") == 1_500_000
    assert parse_rate(2_000_000, "work-hour") == 2_000_000
    assert format_rate(10_000_000) == "10 Mbps" and format_rate(512_000) == "512 Kbps"
    with pytest.raises(ThrottleSettingError, match="not a rate"):
        parse_rate("fast", "work-hour")
    assert parse_hour("08:00", "work start") == 8 and parse_hour("24:00", "work end") == 24
    with pytest.raises(ThrottleSettingError, match="whole hours"):
        parse_hour("08:30", "work start")


async def test_setting_is_checked_and_persisted(catalog: Catalog) -> None:
    assert await load_setting(catalog) == DEFAULT_SETTING and not DEFAULT_SETTING.enabled
    new = await update_setting(
        catalog,
        {
            "enabled": True,
            "work_bps": "10Mbps",
            "non_work_bps": "100Mbps",
            "work_days": ["Mon", "tue", "Wednesday"],
            "work_start": "08:00",
            "work_end": "18:00",
        },
    )
    assert new == ThrottleSetting(True, 10_000_000, 100_000_000, (0, 1, 2), 8, 18)
    assert await load_setting(catalog) == new
    raw = await catalog.get_server_state(THROTTLING_KEY)
    assert raw is not None and json.loads(raw)["work_days"] == [0, 1, 2]
    assert new.describe()["work_day_names"] == ["Monday", "Tuesday", "Wednesday"]

    refused: list[tuple[dict[str, Any], str]] = [
        ({"work_bps": "100Kbps"}, "512 Kbps and 1023 Mbps"),
        ({"non_work_bps": "1024Mbps"}, "512 Kbps and 1023 Mbps"),
        ({"work_days": ["Funday"]}, "unknown work day"),
        ({"work_start": "19:00"}, "start < end"),
        ({"enabled": "yes"}, "true or false"),
        ({"speed": 1}, "unknown throttling field"),
    ]
    for changes, message in refused:
        with pytest.raises(ThrottleSettingError, match=message):
            await update_setting(catalog, changes)
    # Nothing refused was stored; a partial change keeps the other fields.
    assert await load_setting(catalog) == new
    off = await update_setting(catalog, {"enabled": False})
    assert off == ThrottleSetting(False, 10_000_000, 100_000_000, (0, 1, 2), 8, 18)


async def test_online_uploads_wait_on_the_configured_bucket(
    tmp_path: Path, pools: PoolOpener, clock: FakeClock
) -> None:
    slept: list[float] = []
    # Near 0, so that adding a tiny wait still moves the float clock.
    bucket_clock = FakeClock(0.0)

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        bucket_clock.now += max(seconds, 1e-3)

    async with site(tmp_path, pools, "a", clock) as s:
        await register(s, await new_vault(s, tmp_path / "vault"))
        agent, ds = await agent_and_source(s.catalog, "web01")
        throttle = ScheduledThrottle(s.catalog, clock=bucket_clock, sleep=fake_sleep)
        await update_setting(
            s.catalog,
            {"enabled": True, "work_bps": MIN_RATE_BPS, "non_work_bps": MIN_RATE_BPS},
            throttle,
        )
        config = online_config(s.data_dir)
        online = OnlineBackupRunner(
            s.catalog,
            s.pool,
            s.registry,
            lambda: config,
            clock,
            scratch=ScratchGuard(s.catalog, None, lambda: config),
            throttle=throttle,
        )
        try:
            await backup(s, agent, ds, {b"a.bin": os.urandom(2 * MiB)})
            done = await online.run_job(await online.start(ds.id))
            assert done.state is JobState.SUCCEEDED, done.error
            assert done.result is not None
            uploaded = done.result["bytes_uploaded"]
            # Every uploaded byte was paid for at 512 Kbps (64,000 bytes per fake second),
            # less the bucket's initial credit.
            assert throttle.schedule.work_bps == MIN_RATE_BPS
            assert sum(slept) * MIN_RATE_BPS / 8 >= uploaded - throttle.burst

            # Disabled, the same bucket lets the next job's uploads straight through.
            await update_setting(s.catalog, {"enabled": False}, throttle)
            before = len(slept)
            clock.now += 3600
            await backup(s, agent, ds, {b"b.bin": os.urandom(2 * MiB)})
            again = await online.run_job(await online.start(ds.id))
            assert again.state is JobState.SUCCEEDED, again.error
            assert again.result is not None and again.result["bytes_uploaded"] > MiB
            assert len(slept) == before
        finally:
            await online.close()


async def test_a_fresh_bucket_reads_the_stored_setting(catalog: Catalog) -> None:
    await update_setting(catalog, {"enabled": True, "work_bps": "1Mbps", "non_work_bps": "2Mbps"})
    throttle = ScheduledThrottle(catalog)
    assert throttle.setting is None and not throttle.enabled
    await throttle.acquire(1)  # the first upload reads the setting
    assert throttle.enabled and throttle.schedule.work_bps == 1_000_000
    assert throttle.schedule.non_work_bps == 2_000_000
