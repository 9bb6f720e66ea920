"""Protection-group policies: validation messages, defaults, and schedule slots (DST too)."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from server.policy import (
    DEFAULT_RETENTION_DAYS,
    DiskPolicy,
    OnlinePolicy,
    PolicyError,
    disk_policy_from,
    latest_slot,
    max_slot_gap_seconds,
    next_slot,
    online_policy_from,
    resolve_timezone,
    slots_between,
)

PARIS = ZoneInfo("Europe/Paris")
UTC = ZoneInfo("UTC")
FREQUENCIES_TEXT = "15, 30, 45, 60, 120, 240, 360, 720 or 1440 minutes"


def at(  # noqa: PLR0917 - the fields of a datetime
    tz: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0, *, fold: int = 0
) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=tz, fold=fold).timestamp()


def local(tz: ZoneInfo, t: float) -> str:
    return datetime.fromtimestamp(t, tz).strftime("%H:%M%z")


# -- validation ----------------------------------------------------------------


def test_defaults_are_hourly_five_days_and_no_online() -> None:
    disk = disk_policy_from({})
    assert disk == DiskPolicy(60, (), DEFAULT_RETENTION_DAYS)
    assert disk.retention_days == 5
    assert online_policy_from({}).enabled is False


@pytest.mark.parametrize("value", [0, 1, 14, 17, 90, 1441, 10080, -15, "17", "hourly", True, 1.5])
def test_every_other_sync_frequency_is_refused_naming_the_allowed_set(value: Any) -> None:
    with pytest.raises(PolicyError) as info:
        disk_policy_from({"sync_frequency_minutes": value})
    message = str(info.value)
    assert FREQUENCIES_TEXT in message
    assert "'rp-times'" in message
    assert repr(value) in message or str(value) in message


@pytest.mark.parametrize("value", [15, 30, 45, 60, 120, 240, 360, 720, 1440, "45", " 720 "])
def test_allowed_sync_frequencies(value: Any) -> None:
    assert disk_policy_from({"sync_frequency_minutes": value}).sync_frequency_minutes == int(value)


def test_rp_times_only_needs_a_time() -> None:
    with pytest.raises(PolicyError, match="needs at least one recovery-point time"):
        disk_policy_from({"sync_frequency_minutes": "rp-times"})
    policy = disk_policy_from(
        {"sync_frequency_minutes": "RP-Times", "recovery_point_times": "20:00,8:00"}
    )
    assert policy.sync_frequency_minutes is None
    assert policy.recovery_point_times == ("08:00", "20:00")
    assert policy.to_json()["sync_frequency_minutes"] is None


@pytest.mark.parametrize("value", [0, 449, -1, 1000, "0", "five", "5d", True, 2.5, None])
def test_retention_outside_1_to_448_is_refused_naming_the_range(value: Any) -> None:
    with pytest.raises(PolicyError, match="use 1 to 448 days"):
        disk_policy_from({"retention_days": value})


@pytest.mark.parametrize("value", [1, 448, "30"])
def test_retention_bounds_are_allowed(value: Any) -> None:
    assert disk_policy_from({"retention_days": value}).retention_days == int(value)


@pytest.mark.parametrize("value", ["24:00", "8", "08:60", "noon", "8h00", "", 800, "-1:00"])
def test_bad_recovery_point_time_is_refused_naming_the_format(value: Any) -> None:
    with pytest.raises(PolicyError, match="use HH:MM from 00:00 to 23:59"):
        disk_policy_from({"recovery_point_times": [value]})


def test_recovery_point_times_must_be_a_list_without_repeats() -> None:
    with pytest.raises(PolicyError, match="must be a list of HH:MM times"):
        disk_policy_from({"recovery_point_times": 8})
    with pytest.raises(PolicyError, match="08:00 given more than once"):
        disk_policy_from({"recovery_point_times": ["08:00", "8:00"]})


def test_unknown_fields_are_refused_with_the_known_ones() -> None:
    with pytest.raises(PolicyError, match=r"unknown disk policy field\(s\) retention: known are"):
        disk_policy_from({"retention": 5})
    with pytest.raises(PolicyError, match="known are daily, enabled, monthly, times"):
        online_policy_from({"hourly": 5})


def test_partial_input_keeps_the_base() -> None:
    base = DiskPolicy(30, ("08:00",), 14)
    assert disk_policy_from({"retention_days": 20}, base) == DiskPolicy(30, ("08:00",), 20)
    online = OnlinePolicy(True, ("01:00",), 10, 5, 4, 2)
    assert online_policy_from({"daily": 8}, online) == OnlinePolicy(True, ("01:00",), 8, 5, 4, 2)


def test_four_online_times_are_refused() -> None:
    with pytest.raises(PolicyError, match="4 given, at most 3"):
        online_policy_from({"times": ["01:00", "02:00", "03:00", "04:00"]})
    assert online_policy_from({"times": "01:00,02:00,03:00"}).times == ("01:00", "02:00", "03:00")


@pytest.mark.parametrize(
    ("field", "value", "floor"),
    [
        ("daily", 6, "7 days"),
        ("weekly", 3, "4 weeks"),
        ("monthly", 2, "3 months"),
        ("yearly", 0, "1 years"),
        ("daily", -1, "7 days"),
    ],
)
def test_online_counts_below_their_floor_are_refused(field: str, value: int, floor: str) -> None:
    with pytest.raises(PolicyError, match=f"online {field} retention {value} is below the floor"):
        online_policy_from({field: value})
    with pytest.raises(PolicyError, match=f"keep at least {floor}"):
        online_policy_from({field: value})


@pytest.mark.parametrize("value", ["many", 7.5, True, None])
def test_online_counts_that_are_not_numbers_are_refused(value: Any) -> None:
    with pytest.raises(PolicyError, match=r"online daily retention .* at least 7"):
        online_policy_from({"daily": value})


def test_online_floors_are_allowed_and_the_total_is_capped() -> None:
    floors = {"daily": 7, "weekly": 4, "monthly": 3, "yearly": 1}
    assert online_policy_from(floors) == OnlinePolicy(False, ("21:00",), 7, 4, 3, 1)
    with pytest.raises(PolicyError, match="at most 9999 per data source"):
        online_policy_from({"daily": 9000, "weekly": 1000})


def test_online_enabled_needs_a_time_and_a_boolean() -> None:
    with pytest.raises(PolicyError, match="at least one online backup time"):
        online_policy_from({"enabled": True, "times": []})
    with pytest.raises(PolicyError, match="must be true or false, got 'maybe'"):
        online_policy_from({"enabled": "maybe"})
    assert online_policy_from({"enabled": "true"}).enabled is True


def test_unknown_time_zone_is_refused() -> None:
    with pytest.raises(PolicyError, match="unknown time zone 'Mars/Olympus'"):
        resolve_timezone("Mars/Olympus")
    assert resolve_timezone("Europe/Paris") == PARIS


# -- slots -----------------------------------------------------------------------


def test_slots_of_a_frequency_count_from_local_midnight() -> None:
    policy = DiskPolicy(45)
    day = at(UTC, 2024, 5, 1)
    slots = slots_between(policy, UTC, day - 1, day + 86400 - 1)
    assert len(slots) == 32  # 00:00, 00:45 ... 23:15
    assert [local(UTC, s) for s in slots[:3]] == ["00:00+0000", "00:45+0000", "01:30+0000"]
    assert local(UTC, slots[-1]) == "23:15+0000"
    # The next day starts at midnight again, not at 00:00 + 45 min past 23:15.
    assert next_slot(policy, UTC, slots[-1]) == day + 86400


def test_slots_between_is_open_at_the_start_and_closed_at_the_end() -> None:
    policy = DiskPolicy(60)
    t = at(UTC, 2024, 5, 1, 10)
    assert slots_between(policy, UTC, t, t + 3600) == [t + 3600]
    assert slots_between(policy, UTC, t - 1, t) == [t]
    assert slots_between(policy, UTC, t, t) == []
    assert slots_between(policy, UTC, t + 10, t) == []


def test_recovery_point_times_join_the_frequency_slots() -> None:
    policy = DiskPolicy(720, ("08:30",))
    day = at(UTC, 2024, 5, 1)
    slots = slots_between(policy, UTC, day - 1, day + 86400 - 1)
    assert [local(UTC, s) for s in slots] == ["00:00+0000", "08:30+0000", "12:00+0000"]


def test_latest_and_next_slot() -> None:
    policy = DiskPolicy(None, ("08:00", "20:00"))
    morning = at(PARIS, 2024, 5, 1, 9, 15)
    assert latest_slot(policy, PARIS, morning) == at(PARIS, 2024, 5, 1, 8)
    assert next_slot(policy, PARIS, morning) == at(PARIS, 2024, 5, 1, 20)
    # A slot time itself is the latest slot, and the next one is strictly later.
    eight = at(PARIS, 2024, 5, 1, 8)
    assert latest_slot(policy, PARIS, eight) == eight
    assert next_slot(policy, PARIS, eight) == at(PARIS, 2024, 5, 1, 20)
    # Before the first slot of the day: yesterday's last one.
    early = at(PARIS, 2024, 5, 1, 3)
    assert latest_slot(policy, PARIS, early) == at(PARIS, 2024, 4, 30, 20)


def test_spring_forward_day_in_paris_has_23_hourly_slots() -> None:
    """31 March 2024: 02:00 does not exist in Europe/Paris; its slot moves to 03:00 and
    is taken once."""
    policy = DiskPolicy(60)
    start, end = at(PARIS, 2024, 3, 31), at(PARIS, 2024, 4, 1)
    assert end - start == 23 * 3600
    slots = slots_between(policy, PARIS, start - 1, end - 1)
    assert len(slots) == 23
    assert [local(PARIS, s) for s in slots[1:4]] == ["01:00+0100", "03:00+0200", "04:00+0200"]
    assert all(b - a == 3600 for a, b in itertools.pairwise(slots))


def test_spring_forward_moves_a_missing_rp_time_forward() -> None:
    policy = DiskPolicy(None, ("02:30",))
    slot = next_slot(policy, PARIS, at(PARIS, 2024, 3, 30, 12))
    assert datetime.fromtimestamp(slot, PARIS).isoformat() == "2024-03-31T03:30:00+02:00"
    assert next_slot(policy, PARIS, slot) == at(PARIS, 2024, 4, 1, 2, 30)


def test_fall_back_day_in_paris_takes_a_repeated_time_once() -> None:
    """27 October 2024: 02:00-03:00 happens twice in Europe/Paris; the 02:00 slot is the
    first one (summer time) only, so the day still has 24 hourly slots in 25 hours."""
    policy = DiskPolicy(60)
    start, end = at(PARIS, 2024, 10, 27), at(PARIS, 2024, 10, 28)
    assert end - start == 25 * 3600
    slots = slots_between(policy, PARIS, start - 1, end - 1)
    assert len(slots) == 24
    assert slots[2] == at(PARIS, 2024, 10, 27, 2, fold=0)
    assert at(PARIS, 2024, 10, 27, 2, fold=1) not in slots
    assert slots[3] - slots[2] == 2 * 3600


def test_fifteen_minute_slots_over_the_spring_gap() -> None:
    policy = DiskPolicy(15)
    start, end = at(PARIS, 2024, 3, 31), at(PARIS, 2024, 4, 1)
    assert len(slots_between(policy, PARIS, start - 1, end - 1)) == 96 - 4


@pytest.mark.parametrize(
    ("policy", "gap_minutes"),
    [
        (DiskPolicy(15), 15),
        (DiskPolicy(45), 45),  # 23:15 -> 00:00 is 45 too
        (DiskPolicy(360), 360),
        (DiskPolicy(1440), 1440),
        (DiskPolicy(None, ("08:00", "20:00")), 720),
        (DiskPolicy(None, ("06:00", "07:00")), 23 * 60),
        (DiskPolicy(720, ("01:00",)), 720),
        (DiskPolicy(1440, ("23:00",)), 23 * 60),
    ],
)
def test_max_slot_gap(policy: DiskPolicy, gap_minutes: int) -> None:
    assert max_slot_gap_seconds(policy) == gap_minutes * 60.0
