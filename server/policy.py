"""Protection-group policies: what is allowed, the defaults, and when a schedule is due.

Pure code: no I/O, no clock of its own. Everything time-based takes the time (unix seconds)
and the schedule's time zone as arguments, so a test can run months of schedule in
milliseconds.

Disk policy (the MABS model, see shared/DESIGN.md "Policy"):

* `sync_frequency_minutes` is one of `SYNC_FREQUENCIES`, or None for "only at
  recovery-point times". Slots of a frequency are counted from local midnight: every 45
  minutes is 00:00, 00:45, ... 23:15, then 00:00 again.
* `recovery_point_times` are local times of day ("HH:MM") that are slots too. With no
  frequency there must be at least one.
* `retention_days`: 1 to 448, default 5.

Every slot creates one disk recovery point (a backup job). Slots in the local time zone
follow daylight-saving changes: a time that does not exist that day moves forward with the
clock, and a time that happens twice is taken once (the first).

Online policy (used by the cloud tier): `enabled`, up to 3 `times` a day, and GFS
retention counts with floors of 7 daily, 4 weekly, 3 monthly and 1 yearly, at most
`MAX_ONLINE_RPS` in all.

Invalid input raises PolicyError whose message names the field, the value and the
allowed values; nothing is half-applied because the dataclasses are built whole.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "DAY_MINUTES",
    "DEFAULT_RETENTION_DAYS",
    "MAX_ONLINE_RPS",
    "MAX_ONLINE_TIMES",
    "ONLINE_FLOORS",
    "RETENTION_RANGE",
    "SYNC_FREQUENCIES",
    "DiskPolicy",
    "OnlinePolicy",
    "PolicyError",
    "disk_policy_from",
    "latest_slot",
    "max_slot_gap_seconds",
    "next_slot",
    "online_policy_from",
    "resolve_timezone",
    "slots_between",
]

SYNC_FREQUENCIES: Final = (15, 30, 45, 60, 120, 240, 360, 720, 1440)
RETENTION_RANGE: Final = (1, 448)
DEFAULT_RETENTION_DAYS: Final = 5
MAX_ONLINE_TIMES: Final = 3
# GFS floors: MABS refuses shorter online retention than these.
ONLINE_FLOORS: Final[Mapping[str, int]] = {"daily": 7, "weekly": 4, "monthly": 3, "yearly": 1}
MAX_ONLINE_RPS: Final = 9999
DAY_MINUTES: Final = 24 * 60
# The spelling of "no frequency: only at recovery-point times" on the API and CLI.
ONLY_AT_RP_TIMES: Final = "rp-times"

_TIME_RE: Final = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


class PolicyError(ValueError):
    """An invalid policy value; the message says which field, what was given, and what is
    allowed."""


def _frequencies_text() -> str:
    *head, last = (str(f) for f in SYNC_FREQUENCIES)
    return f"{', '.join(head)} or {last} minutes"


def _parse_time(value: object, what: str) -> str:
    if not isinstance(value, str) or not (m := _TIME_RE.fullmatch(value.strip())):
        raise PolicyError(f"{what} {value!r} is not a time of day: use HH:MM from 00:00 to 23:59")
    return f"{int(m[1]):02d}:{m[2]}"


def _parse_times(values: object, what: str, *, limit: int | None = None) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    if not isinstance(values, list | tuple):
        raise PolicyError(f"{what} must be a list of HH:MM times, got {values!r}")
    times = [_parse_time(v, what.rstrip("s")) for v in values]
    dupes = sorted({t for t in times if times.count(t) > 1})
    if dupes:
        raise PolicyError(f"{what}: {', '.join(dupes)} given more than once")
    if limit is not None and len(times) > limit:
        raise PolicyError(f"{what}: {len(times)} given, at most {limit} are allowed")
    return tuple(sorted(times))


def _int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise PolicyError(f"{what} must be a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        return int(value)
    raise PolicyError(f"{what} must be a whole number, got {value!r}")


def _bool(value: object, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise PolicyError(f"{what} must be true or false, got {value!r}")


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


@dataclass(frozen=True, slots=True)
class DiskPolicy:
    sync_frequency_minutes: int | None = 60
    recovery_point_times: tuple[str, ...] = ()
    retention_days: int = DEFAULT_RETENTION_DAYS

    def __post_init__(self) -> None:
        freq = self.sync_frequency_minutes
        if freq is not None and (isinstance(freq, bool) or freq not in SYNC_FREQUENCIES):
            raise PolicyError(
                f"sync frequency {freq!r} is not allowed: use {_frequencies_text()},"
                f" or {ONLY_AT_RP_TIMES!r} for only at recovery-point times"
            )
        if freq is None and not self.recovery_point_times:
            raise PolicyError(
                "a policy that syncs only at recovery-point times needs at least one"
                " recovery-point time (HH:MM)"
            )
        lo, hi = RETENTION_RANGE
        days = self.retention_days
        if isinstance(days, bool) or not isinstance(days, int) or not lo <= days <= hi:
            raise PolicyError(f"disk retention {days!r} days is not allowed: use {lo} to {hi} days")

    @property
    def retention_seconds(self) -> float:
        return self.retention_days * 86400.0

    def slot_minutes(self) -> tuple[int, ...]:
        """Minutes after local midnight at which a slot falls, sorted."""
        minutes = {_minutes(t) for t in self.recovery_point_times}
        if self.sync_frequency_minutes is not None:
            minutes.update(range(0, DAY_MINUTES, self.sync_frequency_minutes))
        return tuple(sorted(minutes))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["recovery_point_times"] = list(self.recovery_point_times)
        return d


@dataclass(frozen=True, slots=True)
class OnlinePolicy:
    enabled: bool = False
    times: tuple[str, ...] = ("21:00",)
    daily: int = 180
    weekly: int = 104
    monthly: int = 60
    yearly: int = 10

    def __post_init__(self) -> None:
        if len(self.times) > MAX_ONLINE_TIMES:
            raise PolicyError(
                f"online backup times: {len(self.times)} given, at most"
                f" {MAX_ONLINE_TIMES} a day are allowed"
            )
        if self.enabled and not self.times:
            raise PolicyError("online protection needs at least one online backup time (HH:MM)")
        total = 0
        for name, floor in ONLINE_FLOORS.items():
            count = getattr(self, name)
            if isinstance(count, bool) or not isinstance(count, int) or count < floor:
                unit = {"daily": "days", "weekly": "weeks", "monthly": "months"}.get(name, "years")
                raise PolicyError(
                    f"online {name} retention {count!r} is below the floor: keep at least"
                    f" {floor} {unit}"
                )
            total += count
        if total > MAX_ONLINE_RPS:
            raise PolicyError(
                f"online retention keeps {total} recovery points in all; at most"
                f" {MAX_ONLINE_RPS} per data source are allowed"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "times": list(self.times),
            "daily": self.daily,
            "weekly": self.weekly,
            "monthly": self.monthly,
            "yearly": self.yearly,
        }


_DISK_KEYS: Final = {"sync_frequency_minutes", "recovery_point_times", "retention_days"}
_ONLINE_KEYS: Final = {"enabled", "times", "daily", "weekly", "monthly", "yearly"}


def _unknown(given: Mapping[str, Any], known: set[str], what: str) -> None:
    extra = sorted(set(given) - known)
    if extra:
        raise PolicyError(
            f"unknown {what} field(s) {', '.join(extra)}: known are {', '.join(sorted(known))}"
        )


def disk_policy_from(given: Mapping[str, Any], base: DiskPolicy | None = None) -> DiskPolicy:
    """A DiskPolicy from JSON-ish input; fields not given keep `base`'s (or the default)."""
    _unknown(given, _DISK_KEYS, "disk policy")
    changes: dict[str, Any] = {}
    if "sync_frequency_minutes" in given:
        freq = given["sync_frequency_minutes"]
        if freq is None or (isinstance(freq, str) and freq.strip().lower() == ONLY_AT_RP_TIMES):
            changes["sync_frequency_minutes"] = None
        else:
            try:
                changes["sync_frequency_minutes"] = _int(freq, "sync frequency")
            except PolicyError:
                raise PolicyError(
                    f"sync frequency {freq!r} is not allowed: use {_frequencies_text()},"
                    f" or {ONLY_AT_RP_TIMES!r} for only at recovery-point times"
                ) from None
    if "recovery_point_times" in given:
        changes["recovery_point_times"] = _parse_times(
            given["recovery_point_times"], "recovery-point times"
        )
    if "retention_days" in given:
        days = given["retention_days"]
        try:
            changes["retention_days"] = _int(days, "disk retention days")
        except PolicyError:
            lo, hi = RETENTION_RANGE
            raise PolicyError(
                f"disk retention {days!r} days is not allowed: use {lo} to {hi} days"
            ) from None
    return replace(base or DiskPolicy(), **changes)


def online_policy_from(given: Mapping[str, Any], base: OnlinePolicy | None = None) -> OnlinePolicy:
    """An OnlinePolicy from JSON-ish input; fields not given keep `base`'s (or the default)."""
    _unknown(given, _ONLINE_KEYS, "online policy")
    changes: dict[str, Any] = {}
    if "enabled" in given:
        changes["enabled"] = _bool(given["enabled"], "online protection")
    if "times" in given:
        changes["times"] = _parse_times(
            given["times"], "online backup times", limit=MAX_ONLINE_TIMES
        )
    for name, floor in ONLINE_FLOORS.items():
        if name in given:
            try:
                changes[name] = _int(given[name], f"online {name} retention")
            except PolicyError:
                raise PolicyError(
                    f"online {name} retention {given[name]!r} is not allowed: use a whole"
                    f" number, at least {floor}"
                ) from None
    return replace(base or OnlinePolicy(), **changes)


# -- time zones and slots ------------------------------------------------------


def resolve_timezone(name: str) -> ZoneInfo:
    """`name` (an IANA zone such as "Europe/Paris"), or the system's zone when empty:
    $TZ, then /etc/localtime's link target, else UTC."""
    if not name:
        name = os.environ.get("TZ", "").lstrip(":")
        if not name:
            try:
                target = Path("/etc/localtime").resolve()
                parts = target.parts
                name = "/".join(parts[parts.index("zoneinfo") + 1 :])
            except (OSError, ValueError):
                name = "UTC"
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise PolicyError(f"unknown time zone {name!r}: use an IANA name such as UTC") from err


def _day_slots(policy: DiskPolicy, tz: ZoneInfo, day: date) -> list[float]:
    out: list[float] = []
    for minute in policy.slot_minutes():
        local = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=tz)
        out.append(local.timestamp())
    # A time in a DST gap lands on the next hour's slot; keep one of each.
    return sorted(set(out))


def _days(tz: ZoneInfo, start: float, end: float) -> Iterator[date]:
    day = datetime.fromtimestamp(start, tz).date() - timedelta(days=1)
    last = datetime.fromtimestamp(end, tz).date() + timedelta(days=1)
    while day <= last:
        yield day
        day += timedelta(days=1)


def slots_between(policy: DiskPolicy, tz: ZoneInfo, after: float, until: float) -> list[float]:
    """Slot times in ``(after, until]``, sorted."""
    if until <= after:
        return []
    return [
        s
        for day in _days(tz, after, until)
        for s in _day_slots(policy, tz, day)
        if after < s <= until
    ]


def latest_slot(policy: DiskPolicy, tz: ZoneInfo, now: float) -> float:
    """The last slot at or before `now` (there is one in every day)."""
    day = datetime.fromtimestamp(now, tz).date()
    for back in range(3):
        slots = [s for s in _day_slots(policy, tz, day - timedelta(days=back)) if s <= now]
        if slots:
            return slots[-1]
    raise AssertionError("a policy has a slot every day")


def next_slot(policy: DiskPolicy, tz: ZoneInfo, after: float) -> float:
    """The first slot strictly after `after`."""
    day = datetime.fromtimestamp(after, tz).date()
    for ahead in range(3):
        slots = [s for s in _day_slots(policy, tz, day + timedelta(days=ahead)) if s > after]
        if slots:
            return slots[0]
    raise AssertionError("a policy has a slot every day")


def max_slot_gap_seconds(policy: DiskPolicy) -> float:
    """The longest wall-clock gap between two consecutive slots: the RPO the policy
    promises (DST shifts aside)."""
    minutes = policy.slot_minutes()
    gaps = [b - a for a, b in itertools.pairwise(minutes)]
    gaps.append(minutes[0] + DAY_MINUTES - minutes[-1])
    return max(gaps) * 60.0
