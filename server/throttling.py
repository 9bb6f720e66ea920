"""Upload throttling (``Set-Throttling``): the persisted setting and the live bucket.

The setting is one JSON document in the catalog's ``server_state`` under ``throttling``::

    {"enabled": bool, "work_bps": int, "non_work_bps": int,
     "work_days": [0..6, ...], "work_start": int, "work_end": int}

Rates are bits per second (512 Kbps .. 1023 Mbps, decimal like MARS); days are Monday 0 ..
Sunday 6; hours are whole local hours with start < end. Every value is checked by
`ThrottleSchedule` (storage_pool/vault/throttle.py), whose messages the operator sees.
No document means throttling is off.

`ScheduledThrottle` is the one `TokenBucket` of the process (`throttle_for`): the online
backup runner installs it in its `Retrying` backend once, and `update_setting` changes
its schedule and enabled flag in place, so a change applies to the uploads of a job that
is already running (the bucket re-reads the rate after every sleep). While disabled it
lets every put through at once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from server.catalog import Catalog
from server.context import ServerContext
from storage_pool.vault.throttle import MAX_RATE_BPS, ThrottleSchedule, TokenBucket

__all__ = [
    "DEFAULT_SETTING",
    "THROTTLING_KEY",
    "ScheduledThrottle",
    "ThrottleSetting",
    "ThrottleSettingError",
    "format_rate",
    "load_setting",
    "parse_hour",
    "parse_rate",
    "throttle_for",
    "update_setting",
]

THROTTLING_KEY: Final = "throttling"
_FIELDS: Final = frozenset(
    {"enabled", "work_bps", "non_work_bps", "work_days", "work_start", "work_end"}
)
_DAY_NAMES: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_RATE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bps|kbps|mbps|gbps)?\s*$", re.IGNORECASE)
_UNITS: Final = {"bps": 1, "kbps": 1000, "mbps": 1000_000, "gbps": 1000_000_000}


class ThrottleSettingError(ValueError):
    """A throttling value the operator gave is not usable; the message says why."""


@dataclass(frozen=True, slots=True)
class ThrottleSetting:
    enabled: bool
    work_bps: int
    non_work_bps: int
    work_days: tuple[int, ...] = (0, 1, 2, 3, 4)
    work_start: int = 9
    work_end: int = 18

    def schedule(self) -> ThrottleSchedule:
        """The engine's schedule (ThrottleSettingError names the bad value)."""
        try:
            return ThrottleSchedule(
                self.work_bps,
                self.non_work_bps,
                frozenset(self.work_days),
                self.work_start,
                self.work_end,
            )
        except ValueError as err:
            raise ThrottleSettingError(str(err)) from err

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["work_days"] = list(self.work_days)
        return doc

    def describe(self) -> dict[str, Any]:
        """The document with readable rates and day names (REST answers, Set-Throttling)."""
        doc = self.to_json()
        doc["work_hour_bandwidth"] = format_rate(self.work_bps)
        doc["non_work_hour_bandwidth"] = format_rate(self.non_work_bps)
        doc["work_day_names"] = [_DAY_NAMES[d] for d in self.work_days]
        return doc


DEFAULT_SETTING: Final = ThrottleSetting(False, MAX_RATE_BPS, MAX_RATE_BPS)


def parse_rate(value: Any, what: str) -> int:
    """Bits per second from ``10Mbps``, ``512 Kbps``, ``1000000`` (bits per second)."""
    if isinstance(value, bool):
        raise ThrottleSettingError(f"{what} bandwidth must be a rate like 10Mbps")
    if isinstance(value, int):
        return value
    if not isinstance(value, str) or (m := _RATE.match(value)) is None:
        raise ThrottleSettingError(
            f"{what} bandwidth {value!r} is not a rate: use a number with Kbps or Mbps"
            " (512Kbps .. 1023Mbps)"
        )
    unit = _UNITS[(m.group(2) or "bps").lower()]
    return round(float(m.group(1)) * unit)


def format_rate(bps: int) -> str:
    if bps >= 1_000_000 and bps % 1000 == 0:
        return f"{bps / 1_000_000:g} Mbps"
    if bps >= 1000:
        return f"{bps / 1000:g} Kbps"
    return f"{bps} bps"


def parse_hour(value: Any, what: str) -> int:
    """A whole hour from 8, "8", "08:00" or "24:00"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d{1,2})(?::(\d{2}))?\s*", value)
        if m is not None:
            if m.group(2) not in (None, "00"):
                raise ThrottleSettingError(
                    f"{what} {value!r}: work hours start and end on whole hours (like 08:00)"
                )
            return int(m.group(1))
    raise ThrottleSettingError(f"{what} {value!r} is not an hour (use HH:00, 00:00 .. 24:00)")


def _parse_days(value: Any) -> tuple[int, ...]:
    items: Iterable[Any]
    if isinstance(value, str):
        items = [v for v in value.split(",") if v.strip()]
    elif isinstance(value, list):
        items = value
    else:
        raise ThrottleSettingError("work days must be a list of day names (Mon,Tue,...)")
    days: set[int] = set()
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item <= 6:
                raise ThrottleSettingError(f"work day {item} must be 0 (Monday) .. 6 (Sunday)")
            days.add(item)
            continue
        if not isinstance(item, str):
            raise ThrottleSettingError(f"unknown work day {item!r} (use Monday..Sunday)")
        try:
            days.update(
                ThrottleSchedule.from_days(
                    work_bps=MAX_RATE_BPS, non_work_bps=MAX_RATE_BPS, days=[item], start=0, end=24
                ).work_days
            )
        except ValueError as err:
            raise ThrottleSettingError(str(err)) from err
    return tuple(sorted(days))


def apply_changes(current: ThrottleSetting, changes: Mapping[str, Any]) -> ThrottleSetting:
    """`current` with the fields of `changes` (REST names, values as the CLI or JSON give
    them) replaced, then checked as a whole."""
    unknown = sorted(set(changes) - _FIELDS)
    if unknown:
        raise ThrottleSettingError(
            f"unknown throttling field(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}"
        )
    new = current
    if "enabled" in changes:
        if not isinstance(changes["enabled"], bool):
            raise ThrottleSettingError("'enabled' must be true or false")
        new = replace(new, enabled=changes["enabled"])
    if "work_bps" in changes:
        new = replace(new, work_bps=parse_rate(changes["work_bps"], "work-hour"))
    if "non_work_bps" in changes:
        new = replace(new, non_work_bps=parse_rate(changes["non_work_bps"], "non-work-hour"))
    if "work_days" in changes:
        new = replace(new, work_days=_parse_days(changes["work_days"]))
    if "work_start" in changes:
        new = replace(new, work_start=parse_hour(changes["work_start"], "work start"))
    if "work_end" in changes:
        new = replace(new, work_end=parse_hour(changes["work_end"], "work end"))
    new.schedule()  # the whole setting is checked, whatever changed
    return new


def _from_doc(doc: Any) -> ThrottleSetting:
    if not isinstance(doc, dict):
        raise ThrottleSettingError("the stored throttling setting is not a JSON object")
    return apply_changes(DEFAULT_SETTING, {k: v for k, v in doc.items() if k in _FIELDS})


async def load_setting(catalog: Catalog) -> ThrottleSetting:
    raw = await catalog.get_server_state(THROTTLING_KEY)
    if raw is None:
        return DEFAULT_SETTING
    try:
        return _from_doc(json.loads(raw))
    except (ValueError, ThrottleSettingError) as err:
        raise ThrottleSettingError(f"stored throttling setting is unusable: {err}") from err


class ScheduledThrottle(TokenBucket):
    """The process's upload bucket; see the module docstring."""

    def __init__(self, catalog: Catalog, **kwargs: Any) -> None:
        super().__init__(DEFAULT_SETTING.schedule(), **kwargs)
        self.catalog = catalog
        self.setting: ThrottleSetting | None = None  # None: not read from the catalog yet

    @property
    def enabled(self) -> bool:
        return self.setting is not None and self.setting.enabled

    def apply(self, setting: ThrottleSetting) -> None:
        self.schedule = setting.schedule()
        self.setting = setting

    async def refresh(self) -> ThrottleSetting:
        setting = await load_setting(self.catalog)
        self.apply(setting)
        return setting

    async def acquire(self, nbytes: int) -> None:
        if self.setting is None:
            await self.refresh()
        if self.enabled:
            await super().acquire(nbytes)


async def update_setting(
    catalog: Catalog, changes: Mapping[str, Any], throttle: ScheduledThrottle | None = None
) -> ThrottleSetting:
    """Check and store the changed setting; `throttle` follows it at once."""
    new = apply_changes(await load_setting(catalog), changes)
    await catalog.set_server_state(THROTTLING_KEY, json.dumps(new.to_json(), sort_keys=True))
    if throttle is not None:
        throttle.apply(new)
    return new


# One bucket per data dir for the life of the process (as operator_vault.registry_for).
_THROTTLES: dict[Path, ScheduledThrottle] = {}


def throttle_for(ctx: ServerContext) -> ScheduledThrottle:
    key = ctx.config.data_dir.resolve()
    throttle = _THROTTLES.get(key)
    if throttle is None or throttle.catalog is not ctx.catalog:
        throttle = ScheduledThrottle(ctx.catalog)
        _THROTTLES[key] = throttle
    return throttle
