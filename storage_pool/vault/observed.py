"""`Observed`: a backend wrapper that tells an observer whether the service answered.

Every operation is forwarded unchanged to the inner backend; its outcome is reported to a
`ContactObserver` and the result or error passed back as it was. The connection monitor
(server/cloud_health.py) learns from real traffic this way, between its own probes.

What counts as contact: a success, and an answer that only the service can give about an
object (`NotFound`, `IntegrityError`): the request reached the service and was served.
Everything else in the error tree (`TransientError`, `Throttled`, `AuthError`,
`ContainerGone`, a plain `VaultBackendError`) is a failed contact and is reported with the
error, whose class the monitor classifies. Errors outside the tree (a bad name, a
cancellation) say nothing about the service and are not reported. `close` is not reported.

Placed under `retry.Retrying` the observer sees every attempt; above it, the outcome of
each retried call. Observer methods are called synchronously on every operation: they must
be cheap and must not raise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from typing import Protocol, TypeVar

from storage_pool.vault.backend import (
    IntegrityError,
    NotFound,
    ObjectInfo,
    PutData,
    VaultBackend,
    VaultBackendError,
)

__all__ = ["ContactObserver", "Observed"]

T = TypeVar("T")


class ContactObserver(Protocol):
    def on_contact(self) -> None:
        """The service answered (success, or NotFound / IntegrityError)."""

    def on_failure(self, exc: VaultBackendError) -> None:
        """The call failed without an answer about the object (see the module docstring)."""


class Observed(VaultBackend):
    def __init__(self, inner: VaultBackend, observer: ContactObserver) -> None:
        self.inner = inner
        self.observer = observer

    @property
    def description(self) -> str:
        return self.inner.description

    async def _observe(self, call: Awaitable[T]) -> T:
        try:
            result = await call
        except (NotFound, IntegrityError):
            self.observer.on_contact()
            raise
        except VaultBackendError as err:
            self.observer.on_failure(err)
            raise
        self.observer.on_contact()
        return result

    async def put(self, name: str, data: PutData, *, sha256: bytes | None = None) -> None:
        await self._observe(self.inner.put(name, data, sha256=sha256))

    async def get(self, name: str) -> bytes:
        return await self._observe(self.inner.get(name))

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        return await self._observe(self.inner.get_range(name, offset, length))

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        answered = False
        try:
            async for info in self.inner.list(prefix):
                if not answered:  # one report per listing, not one per name
                    answered = True
                    self.observer.on_contact()
                yield info
        except VaultBackendError as err:
            self.observer.on_failure(err)
            raise
        if not answered:
            self.observer.on_contact()

    async def head(self, name: str) -> int | None:
        return await self._observe(self.inner.head(name))

    async def delete(self, name: str) -> None:
        await self._observe(self.inner.delete(name))

    async def create_if_absent(self, name: str, data: bytes) -> bool:
        return await self._observe(self.inner.create_if_absent(name, data))

    async def ensure_container(self) -> None:
        await self._observe(self.inner.ensure_container())

    async def container_exists(self) -> bool:
        return await self._observe(self.inner.container_exists())

    async def abort_stale_uploads(self, older_than: timedelta) -> int:
        return await self._observe(self.inner.abort_stale_uploads(older_than))

    async def close(self) -> None:
        await self.inner.close()
