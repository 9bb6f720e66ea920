"""Helpers of the catalog tests: a settable clock and catalogs that are always closed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from server.catalog import Catalog

T0 = 1_700_000_000.0  # 2023-11-14, a fixed start so expiry tests read plainly


class FakeClock:
    """The catalog's clock, moved by hand: `clock.now += 3600`."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def opened(path: Path, clock: FakeClock | None = None) -> AsyncIterator[Catalog]:
    catalog = await Catalog.open(path, clock=clock or FakeClock())
    try:
        yield catalog
    finally:
        await catalog.close()
