"""Opens storage pools for a test and closes every one of them afterwards."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from storage_pool import PoolConfig, StoragePool
from storage_pool.pool import Durability


class PoolOpener:
    """Creates and opens pools under one directory; `close_all` runs at teardown, so a
    failing test never leaves a pool (its lock, executor and sqlite handles) open."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._opened: list[StoragePool] = []
        self._created: list[Path] = []

    def path(self, name: str = "pool") -> Path:
        return self.base / name

    async def create(
        self,
        name: str = "pool",
        *,
        durability: Durability = Durability.FILESYSTEM,
        config: PoolConfig | None = None,
    ) -> StoragePool:
        self._created.append(self.path(name))
        pool = await StoragePool.create(self.path(name), config, durability=durability)
        self._opened.append(pool)
        return pool

    async def open(
        self, name: str = "pool", *, durability: Durability = Durability.FILESYSTEM
    ) -> StoragePool:
        pool = await StoragePool.open(self.path(name), durability=durability)
        self._opened.append(pool)
        return pool

    async def close_all(self) -> None:
        for pool in reversed(self._opened):
            await pool.close()  # idempotent: tests may have closed it already
        self._opened.clear()

    async def remove_all(self) -> None:
        """Delete every pool directory this opener created (after close_all)."""
        for path in self._created:
            await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)
        self._created.clear()


@asynccontextmanager
async def opened_pools(base: Path) -> AsyncIterator[PoolOpener]:
    """A `PoolOpener` under `base` whose pools are closed and deleted on the way out."""
    opener = PoolOpener(base)
    try:
        yield opener
    finally:
        await opener.close_all()
        await opener.remove_all()
