"""Upload throttling on a fake clock: rates by work hours, validation, the long-run rate."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from storage_pool.vault.folder import FolderBackend
from storage_pool.vault.retry import Retrying
from storage_pool.vault.throttle import (
    MAX_RATE_BPS,
    MIN_RATE_BPS,
    ThrottleSchedule,
    TokenBucket,
)

MBPS = 1_000_000
# Monday 2026-11-23 08:00 UTC.
MONDAY_8AM = datetime(2026, 11, 23, 8, 0, tzinfo=UTC).timestamp()


class FakeTime:
    def __init__(self, start: float) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def schedule(work: int = 8 * MBPS, off: int = 80 * MBPS) -> ThrottleSchedule:
    return ThrottleSchedule(work, off, frozenset(range(5)), 9, 18, UTC)


def test_work_hours_pick_the_rate() -> None:
    plan = schedule()
    assert not plan.is_work_time(MONDAY_8AM)
    assert plan.is_work_time(MONDAY_8AM + 3600)  # 09:00
    assert not plan.is_work_time(MONDAY_8AM + 10 * 3600)  # 18:00
    saturday_noon = MONDAY_8AM + 5 * 86400 + 4 * 3600
    assert not plan.is_work_time(saturday_noon)
    assert plan.bytes_per_second(MONDAY_8AM + 3600) == 1_000_000
    assert plan.bytes_per_second(MONDAY_8AM) == 10_000_000


@pytest.mark.parametrize("bps", [MIN_RATE_BPS - 1, MAX_RATE_BPS + 1, 0])
def test_rates_outside_mars_range_are_refused(bps: int) -> None:
    with pytest.raises(ValueError, match="between 512 Kbps and 1023 Mbps"):
        ThrottleSchedule(bps, 8 * MBPS)
    with pytest.raises(ValueError, match="non-work-hour"):
        ThrottleSchedule(8 * MBPS, bps)


def test_limits_are_accepted() -> None:
    ThrottleSchedule(MIN_RATE_BPS, MAX_RATE_BPS)


def test_bad_days_and_hours_are_refused() -> None:
    with pytest.raises(ValueError, match="work days"):
        ThrottleSchedule(8 * MBPS, 8 * MBPS, frozenset({7}))
    with pytest.raises(ValueError, match="work hours"):
        ThrottleSchedule(8 * MBPS, 8 * MBPS, work_start=18, work_end=9)
    with pytest.raises(ValueError, match="unknown work day"):
        ThrottleSchedule.from_days(
            work_bps=8 * MBPS, non_work_bps=8 * MBPS, days=["Funday"], start=9, end=17
        )
    plan = ThrottleSchedule.from_days(
        work_bps=8 * MBPS, non_work_bps=8 * MBPS, days=["mon", "Friday"], start=9, end=17
    )
    assert plan.work_days == frozenset({0, 4})


async def test_bucket_keeps_the_configured_rate_on_a_fake_clock() -> None:
    fake = FakeTime(MONDAY_8AM + 3600)  # work hours: 1 MB/s
    bucket = TokenBucket(schedule(), burst=100_000, clock=fake.clock, sleep=fake.sleep)
    for _ in range(10):
        await bucket.acquire(1_000_000)
    elapsed = fake.now - (MONDAY_8AM + 3600)
    # 10 MB at 1 MB/s with 100 kB of initial credit: 9.9 s of waiting, exactly.
    assert elapsed == pytest.approx(9.9)


async def test_bucket_uses_the_non_work_rate_outside_work_hours() -> None:
    fake = FakeTime(MONDAY_8AM)  # 08:00: 10 MB/s
    bucket = TokenBucket(schedule(), burst=1, clock=fake.clock, sleep=fake.sleep)
    await bucket.acquire(10_000_000)
    assert fake.now - MONDAY_8AM == pytest.approx(1.0, rel=1e-6)


async def test_zero_bytes_never_waits() -> None:
    fake = FakeTime(MONDAY_8AM)
    bucket = TokenBucket(schedule(), burst=1, clock=fake.clock, sleep=fake.sleep)
    await bucket.acquire(0)
    assert fake.sleeps == []


async def test_retrying_wrapper_throttles_puts(tmp_path: Path) -> None:
    fake = FakeTime(MONDAY_8AM + 3600)  # work hours: 1 MB/s
    bucket = TokenBucket(schedule(), burst=1, clock=fake.clock, sleep=fake.sleep)
    async with Retrying(FolderBackend(tmp_path / "vault"), throttle=bucket) as vault:
        await vault.ensure_container()
        await vault.put("packs/p1", b"x" * 2_000_000)
        await vault.create_if_absent("header", b"h" * 500_000)
        assert await vault.get("packs/p1") == b"x" * 2_000_000
    assert fake.now - (MONDAY_8AM + 3600) == pytest.approx(2.5, rel=1e-6)
