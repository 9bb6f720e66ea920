"""GFS selection of online RPs: worked examples, and properties checked on seeded random
histories against an independent formulation of the rule."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

import pytest

from storage_pool.vault.gfs import MAX_ONLINE_RPS, select_keep

NS = 1_000_000_000


def ns(when: datetime) -> int:
    return int(when.timestamp()) * NS + when.microsecond * 1000


def daily_history(first: datetime, days: int) -> list[tuple[str, int]]:
    return [
        ((first + timedelta(days=i)).date().isoformat(), ns(first + timedelta(days=i)))
        for i in range(days)
    ]


def test_worked_example_one_rp_a_day() -> None:
    rps = daily_history(datetime(2024, 1, 1, 21, 0, tzinfo=UTC), 100)  # to Tue 2024-04-09
    kept = select_keep(
        rps, daily=7, weekly=4, monthly=3, yearly=1, tz=UTC, now=datetime(2024, 4, 10, tzinfo=UTC)
    )
    days = {f"2024-04-0{d}" for d in range(3, 10)}
    sundays = {"2024-03-31", "2024-03-24"}  # weeks 13 and 12; weeks 15, 14: Apr 9, Apr 7
    assert kept == days | sundays | {"2024-02-29"}  # months: Apr 9, Mar 31, Feb 29


def test_periods_follow_the_time_zone() -> None:
    late = ("late", ns(datetime(2024, 3, 31, 22, 30, tzinfo=UTC)))  # 00:30 on 1 April in Berlin
    noon = ("noon", ns(datetime(2024, 3, 31, 12, 0, tzinfo=UTC)))
    now = datetime(2024, 4, 2, tzinfo=UTC)
    counts = {"daily": 0, "weekly": 0, "monthly": 2, "yearly": 0}
    assert select_keep([late, noon], **counts, tz=UTC, now=now) == {"late"}
    assert select_keep([late, noon], **counts, tz=ZoneInfo("Europe/Berlin"), now=now) == {
        "late",
        "noon",
    }


def test_ties_newest_always_and_future_rps() -> None:
    t = ns(datetime(2024, 5, 1, tzinfo=UTC))
    now = datetime(2024, 5, 2, tzinfo=UTC)
    # Same time: the greater name counts as the newer, whatever the input order.
    assert select_keep([("b", t), ("a", t)], daily=1, weekly=0, monthly=0, yearly=0, now=now) == {
        "b"
    }
    assert select_keep([("a", t), ("b", t)], daily=1, weekly=0, monthly=0, yearly=0, now=now) == {
        "b"
    }
    # All counts zero: the newest is still kept.
    assert select_keep(
        [("a", t), ("b", t - NS)], daily=0, weekly=0, monthly=0, yearly=0, now=now
    ) == {"a"}
    # Dated after now (a clock stepped back): kept, and it does not push others out.
    future = [
        ("f1", ns(datetime(2030, 1, 1, tzinfo=UTC))),
        ("f2", ns(datetime(2030, 1, 2, tzinfo=UTC))),
    ]
    kept = select_keep([*future, ("a", t)], daily=1, weekly=0, monthly=0, yearly=0, now=now)
    assert kept == {"f1", "f2"}  # daily=1 takes the newest day (f2); f1 is kept as future
    assert select_keep([], daily=1, weekly=1, monthly=1, yearly=1, now=now) == set()


def test_bad_input_is_refused() -> None:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="at most 9999"):
        select_keep([], daily=9000, weekly=1000, monthly=0, yearly=0, now=now)
    with pytest.raises(ValueError, match="non-negative"):
        select_keep([], daily=-1, weekly=0, monthly=0, yearly=0, now=now)
    with pytest.raises(ValueError, match="twice"):
        select_keep([("a", 1), ("a", 2)], daily=1, weekly=0, monthly=0, yearly=0, now=now)
    with pytest.raises(ValueError, match="aware"):
        select_keep([], daily=1, weekly=0, monthly=0, yearly=0, now=datetime(2024, 1, 1))


def oracle(rps: list[tuple[str, int]], counts: tuple[int, int, int, int], tz: tzinfo) -> set[str]:
    """The rule stated per period: the newest RP of each of the N latest periods that
    have an RP, for each rule; plus the newest RP. (No RP in these histories is in the
    future.)"""

    def local(created: int) -> datetime:
        return datetime.fromtimestamp(created // NS, UTC).astimezone(tz)

    periods: tuple[Callable[[datetime], object], ...] = (
        lambda t: t.date(),
        lambda t: tuple(t.isocalendar())[:2],
        lambda t: (t.year, t.month),
        lambda t: t.year,
    )
    keep = {max(rps, key=lambda r: (r[1], r[0]))[0]} if rps else set()
    for count, period_of in zip(counts, periods, strict=True):
        buckets: dict[object, tuple[int, str]] = {}
        for name, created in rps:
            key = period_of(local(created))
            buckets[key] = max(buckets.get(key, (created, name)), (created, name))
        latest = sorted(buckets.items(), key=lambda kv: kv[1], reverse=True)[:count]
        keep.update(name for _, (_, name) in latest)
    return keep


def random_history(rng: random.Random) -> list[tuple[str, int]]:
    start = ns(datetime(2019, 1, 1, tzinfo=UTC))
    span = 6 * 365 * 86400 * NS
    count = rng.randrange(0, 400)
    times = [start + rng.randrange(span) // NS * NS for _ in range(count)]
    if count and rng.random() < 0.3:
        times += times[: count // 4]  # equal creation times
    return [(f"rp{i:04d}", t) for i, t in enumerate(times)]


@pytest.mark.parametrize("seed", range(40))
def test_properties_on_random_histories(seed: int) -> None:
    rng = random.Random(seed)
    rps = random_history(rng)
    daily, weekly, monthly, yearly = (rng.choice([0, 1, 2, 3, 7, 12, 30]) for _ in range(4))
    counts = (daily, weekly, monthly, yearly)
    tz: tzinfo = rng.choice([UTC, ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")])
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def keep(items: list[tuple[str, int]], *, more: int = 0) -> set[str]:
        return select_keep(
            items, daily=daily + more, weekly=weekly, monthly=monthly, yearly=yearly, tz=tz, now=now
        )

    kept = keep(rps)
    assert kept == oracle(rps, counts, tz)
    assert kept <= {name for name, _ in rps}
    assert len(kept) <= max(1, sum(counts)) or not rps
    if rps:
        assert max(rps, key=lambda r: (r[1], r[0]))[0] in kept
    shuffled = list(rps)
    rng.shuffle(shuffled)
    assert keep(shuffled) == kept  # input order does not matter
    assert keep([r for r in rps if r[0] in kept]) == kept  # applying it again deletes nothing
    assert kept <= keep(rps, more=5)  # a larger count never drops an RP


def test_at_most_9999_kept_from_a_long_history() -> None:
    start = datetime(1990, 1, 1, tzinfo=UTC)
    rps = [(str(i), ns(start + timedelta(hours=8 * i))) for i in range(40_000)]
    kept = select_keep(
        rps, daily=9000, weekly=900, monthly=90, yearly=9, now=datetime(2030, 1, 1, tzinfo=UTC)
    )
    assert len(kept) <= MAX_ONLINE_RPS
    assert len(kept) >= 9000  # the other rules fall inside the 9000 days here
