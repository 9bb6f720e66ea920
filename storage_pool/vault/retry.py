"""The one place vault calls are retried: `Retrying`, a wrapper over any backend.

Only `TransientError` (timeouts, resets, 5xx) and `Throttled` (429/503, honouring the
service's Retry-After) are retried, with exponential backoff and full jitter, inside a total
time budget per call. `IntegrityError`, `AuthError`, `NotFound`, `ContainerGone` and every
other error pass through at once: retrying cannot fix them and must not hide them.

Every operation is safe to repeat: put replaces the whole object, delete is idempotent.
Two consequences callers should know: a retried `create_if_absent` whose first attempt
reached the service may answer False for an object this call itself created (compare the
content if it matters); a `list` that fails part-way starts again and skips names it
already yielded.

When given a `TokenBucket`, the wrapper also throttles uploads: each put attempt first
acquires the object's size in bytes.

`policy` and `observer` are plain attributes a caller may replace between calls (a live
config change of the budget; the job that currently owns the wrapper watching its
retries). `observer` gets one `RetryEvent` per retry, before the wait.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from storage_pool.vault.backend import (
    ObjectInfo,
    PutData,
    Throttled,
    TransientError,
    VaultBackend,
)
from storage_pool.vault.blocks import data_size
from storage_pool.vault.throttle import TokenBucket

__all__ = ["RetryEvent", "RetryPolicy", "Retrying"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff ``initial * multiplier**n`` capped at ``maximum`` seconds, fully jittered;
    no new attempt starts once ``budget`` seconds have passed since the first."""

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    budget: float = 300.0
    max_attempts: int = 1000

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial or self.multiplier < 1:
            raise ValueError("retry policy needs 0 < initial <= maximum and multiplier >= 1")
        if self.budget < 0 or self.max_attempts < 1:
            raise ValueError("retry budget must be >= 0 and max_attempts >= 1")


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """One retry about to happen: `attempt` calls of `what` failed so far, the last with
    `error`; the next starts after `delay` s, with `spent` s of the call's `budget` used
    (the delay included)."""

    what: str
    error: TransientError
    attempt: int
    delay: float
    spent: float
    budget: float


class Retrying(VaultBackend):
    def __init__(
        self,
        inner: VaultBackend,
        policy: RetryPolicy | None = None,
        *,
        throttle: TokenBucket | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        on_retry: Callable[[str, TransientError, float], None] | None = None,
        observer: Callable[[RetryEvent], None] | None = None,
    ) -> None:
        self.inner = inner
        self.policy = policy if policy is not None else RetryPolicy()
        self.throttle = throttle
        self._monotonic = monotonic
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._on_retry = on_retry
        self.observer = observer

    @property
    def description(self) -> str:
        return self.inner.description

    def _delay(self, attempt: int, err: TransientError) -> float:
        cap = min(self.policy.maximum, self.policy.initial * self.policy.multiplier**attempt)
        delay = self._rng.uniform(0, cap)
        if isinstance(err, Throttled) and err.retry_after is not None:
            delay = max(delay, err.retry_after)
        return delay

    async def _backoff(self, what: str, err: TransientError, attempt: int, started: float) -> None:
        """Wait before attempt ``attempt + 1``, or re-raise `err` when the policy says stop."""
        policy = self.policy  # one policy for this decision, even if replaced meanwhile
        delay = self._delay(attempt - 1, err)
        spent = self._monotonic() - started
        if attempt >= policy.max_attempts or spent + delay > policy.budget:
            raise err
        if self._on_retry is not None:
            self._on_retry(what, err, delay)
        if self.observer is not None:
            self.observer(RetryEvent(what, err, attempt, delay, spent + delay, policy.budget))
        await self._sleep(delay)

    async def _retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        started = self._monotonic()
        attempt = 0
        while True:
            try:
                return await call()
            except TransientError as err:
                attempt += 1
                await self._backoff(what, err, attempt, started)

    # ------------------------------------------------------------------ operations

    async def put(self, name: str, data: PutData, *, sha256: bytes | None = None) -> None:
        size = await asyncio.to_thread(data_size, data) if self.throttle is not None else 0

        async def attempt() -> None:
            if self.throttle is not None:
                await self.throttle.acquire(size)
            await self.inner.put(name, data, sha256=sha256)

        await self._retry("put", attempt)

    async def get(self, name: str) -> bytes:
        return await self._retry("get", lambda: self.inner.get(name))

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        return await self._retry("get_range", lambda: self.inner.get_range(name, offset, length))

    async def head(self, name: str) -> int | None:
        return await self._retry("head", lambda: self.inner.head(name))

    async def delete(self, name: str) -> None:
        await self._retry("delete", lambda: self.inner.delete(name))

    async def create_if_absent(self, name: str, data: bytes) -> bool:
        async def attempt() -> bool:
            if self.throttle is not None:
                await self.throttle.acquire(len(data))
            return await self.inner.create_if_absent(name, data)

        return await self._retry("create_if_absent", attempt)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        seen: set[str] = set()
        started = self._monotonic()
        attempt = 0
        while True:
            try:
                async for info in self.inner.list(prefix):
                    if info.name not in seen:
                        seen.add(info.name)
                        yield info
                return
            except TransientError as err:
                attempt += 1
                await self._backoff("list", err, attempt, started)

    async def ensure_container(self) -> None:
        await self._retry("ensure_container", self.inner.ensure_container)

    async def container_exists(self) -> bool:
        return await self._retry("container_exists", self.inner.container_exists)

    async def abort_stale_uploads(self, older_than: timedelta) -> int:
        return await self._retry(
            "abort_stale_uploads", lambda: self.inner.abort_stale_uploads(older_than)
        )

    async def close(self) -> None:
        await self.inner.close()
