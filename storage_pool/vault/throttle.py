"""Upload throttling (``Set-Throttling``): a token bucket whose rate follows work hours.

Rates are in bits per second, decimal like MARS's: 512 Kbps (512,000 bit/s) to 1023 Mbps
(1,023,000,000 bit/s). `ThrottleSchedule` gives one rate inside work hours (some weekdays,
from ``work_start`` to ``work_end`` local time) and another outside them.

`TokenBucket.acquire(n)` waits until ``n`` bytes may be sent. The bucket holds at most
``burst`` bytes of credit; a request larger than the credit runs the bucket into debt and
waits that debt off before returning, so an 8 MiB block at 1 MiB/s waits ~8 s, and the
long-run rate is the configured one whatever the request sizes. Waiters are served in
arrival order. The rate is re-read after every sleep, so a change between work and
non-work hours applies to the rest of a wait.

Time comes from an injected clock (unix seconds) and sleep, so tests run on a fake clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo

__all__ = [
    "MAX_RATE_BPS",
    "MIN_RATE_BPS",
    "ThrottleSchedule",
    "TokenBucket",
    "check_rate",
]

MIN_RATE_BPS = 512 * 1000
MAX_RATE_BPS = 1023 * 1000 * 1000
_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def check_rate(what: str, bits_per_second: int) -> int:
    if not MIN_RATE_BPS <= bits_per_second <= MAX_RATE_BPS:
        raise ValueError(
            f"{what} bandwidth {_human(bits_per_second)} is out of range: it must be between "
            f"512 Kbps and 1023 Mbps ({MIN_RATE_BPS} to {MAX_RATE_BPS} bits per second)"
        )
    return bits_per_second


def _human(bps: int) -> str:
    if bps >= 1_000_000:
        return f"{bps / 1_000_000:g} Mbps"
    if bps >= 1000:
        return f"{bps / 1000:g} Kbps"
    return f"{bps} bps"


@dataclass(frozen=True, slots=True)
class ThrottleSchedule:
    """Work-hour and non-work-hour upload rates.

    ``work_days`` are weekday numbers (Monday 0 .. Sunday 6); ``work_start`` and
    ``work_end`` are whole hours 0..24 with start < end (work hours do not cross midnight).
    ``tz`` None means the host's local time.
    """

    work_bps: int
    non_work_bps: int
    work_days: frozenset[int] = frozenset(range(5))
    work_start: int = 9
    work_end: int = 18
    tz: tzinfo | None = None

    def __post_init__(self) -> None:
        check_rate("work-hour", self.work_bps)
        check_rate("non-work-hour", self.non_work_bps)
        bad_days = sorted(d for d in self.work_days if not 0 <= d <= 6)
        if bad_days:
            raise ValueError(f"work days must be 0 (Monday) .. 6 (Sunday), got {bad_days}")
        if not 0 <= self.work_start < self.work_end <= 24:
            raise ValueError(
                f"work hours must satisfy 0 <= start < end <= 24, got "
                f"{self.work_start}..{self.work_end}"
            )

    @classmethod
    def from_days(
        cls,
        *,
        work_bps: int,
        non_work_bps: int,
        days: Iterable[str],
        start: int,
        end: int,
        tz: tzinfo | None = None,
    ) -> ThrottleSchedule:
        """From day names ("Monday", "mon", case-insensitive), as the CLI takes them."""
        numbers: set[int] = set()
        for day in days:
            matches = [
                i
                for i, full in enumerate(_DAY_NAMES)
                if full.lower().startswith(day.strip().lower()) and len(day.strip()) >= 3
            ]
            if len(matches) != 1:
                raise ValueError(f"unknown work day {day!r} (use Monday..Sunday)")
            numbers.add(matches[0])
        return cls(work_bps, non_work_bps, frozenset(numbers), start, end, tz)

    def is_work_time(self, unix_seconds: float) -> bool:
        moment = datetime.fromtimestamp(unix_seconds, self.tz)
        return moment.weekday() in self.work_days and self.work_start <= moment.hour < self.work_end

    def bytes_per_second(self, unix_seconds: float) -> float:
        bps = self.work_bps if self.is_work_time(unix_seconds) else self.non_work_bps
        return bps / 8


class TokenBucket:
    """Byte credit refilled at the schedule's rate; see the module docstring."""

    def __init__(
        self,
        schedule: ThrottleSchedule,
        *,
        burst: int = 256 * 1024,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if burst <= 0:
            raise ValueError("burst must be positive")
        self.schedule = schedule
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._last = clock()
        self._turn = asyncio.Lock()

    def _refill(self) -> float:
        now = self._clock()
        elapsed = max(0.0, now - self._last)
        self._last = now
        rate = self.schedule.bytes_per_second(now)
        self._tokens = min(float(self.burst), self._tokens + elapsed * rate)
        return rate

    async def acquire(self, nbytes: int) -> None:
        """Wait until ``nbytes`` may be sent (0 returns at once)."""
        if nbytes <= 0:
            return
        async with self._turn:
            rate = self._refill()
            self._tokens -= nbytes
            # Wait our debt off before the bytes go; the rate is re-read after each sleep.
            while self._tokens < 0:
                await self._sleep(-self._tokens / rate)
                rate = self._refill()
