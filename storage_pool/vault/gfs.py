"""GFS retention of online recovery points: which RPs of one data source to keep (pure).

The rule (restic ``forget --keep-daily/--keep-weekly/--keep-monthly/--keep-yearly``, which
MABS's daily/weekly/monthly/yearly online retention matches for one backup a day):

- Order the RPs newest first: by creation time, equal times by name, the greater name
  counting as the newer (so the result never depends on input order).
- Each rule walks that order on its own and keeps the first (newest) RP of each new
  period it meets, until it has kept ``count`` periods. A period is a calendar day, an
  ISO week (ISO year and week number, Monday to Sunday), a calendar month or a calendar
  year, all in time zone ``tz``. Periods without an RP are skipped, not counted: "the
  last 7 days" means the last 7 days that have an RP.
- An RP kept by several rules is kept once; the result is the union of the rules.
- The newest RP is always kept (even when every count is 0), so retention never
  deletes the last online copy of a data source.
- An RP created after ``now`` is kept too: its date cannot be trusted (a clock stepped
  back) and retention must not delete the newest backups because of a clock error.

At most ``MAX_ONLINE_RPS`` (9999) RPs per data source: the counts may sum to at most that,
and each rule keeps at most its count, so the result holds at most
``max(1, daily + weekly + monthly + yearly)`` RPs, plus any dated after ``now``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from datetime import UTC, datetime, timedelta, tzinfo

MAX_ONLINE_RPS = 9999

PeriodKey = Callable[[datetime], Hashable]


def _day(t: datetime) -> Hashable:
    return t.date()


def _week(t: datetime) -> Hashable:
    iso = t.isocalendar()
    return (iso.year, iso.week)


def _month(t: datetime) -> Hashable:
    return (t.year, t.month)


def _year(t: datetime) -> Hashable:
    return t.year


def _at(created_ns: int, tz: tzinfo) -> datetime:
    """Exact to the microsecond (a float of nanoseconds since 1970 is not)."""
    seconds, ns = divmod(created_ns, 1_000_000_000)
    when = datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=ns // 1000)
    return when.astimezone(tz)


def select_keep(
    rps: Sequence[tuple[str, int]],
    *,
    daily: int,
    weekly: int,
    monthly: int,
    yearly: int,
    tz: tzinfo = UTC,
    now: datetime,
) -> set[str]:
    """The names of `rps` (name, created_ns) to keep under the rule in the module docstring.

    ValueError for a negative count, counts summing past `MAX_ONLINE_RPS`, a repeated
    name or a naive `now`.
    """
    counts = {"daily": daily, "weekly": weekly, "monthly": monthly, "yearly": yearly}
    for rule, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"GFS {rule} count must be a non-negative integer, not {count!r}")
    if sum(counts.values()) > MAX_ONLINE_RPS:
        raise ValueError(
            f"GFS counts keep {sum(counts.values())} recovery points; at most"
            f" {MAX_ONLINE_RPS} per data source are allowed"
        )
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    names = [name for name, _ in rps]
    if len(set(names)) != len(names):
        raise ValueError("a recovery point name appears twice")
    if not rps:
        return set()

    ordered = sorted(rps, key=lambda rp: (rp[1], rp[0]), reverse=True)
    local = [(name, _at(created, tz)) for name, created in ordered]
    keep = {ordered[0][0]}
    keep.update(name for name, when in local if when > now)
    rules: tuple[tuple[int, PeriodKey], ...] = (
        (daily, _day),
        (weekly, _week),
        (monthly, _month),
        (yearly, _year),
    )
    for count, period_of in rules:
        seen: set[Hashable] = set()
        for name, when in local:
            if len(seen) >= count:
                break
            period = period_of(when)
            if period not in seen:
                seen.add(period)
                keep.add(name)
    return keep
