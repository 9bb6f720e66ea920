"""Fixtures of the server unit tests: a catalog on a real SQLite file with a fake clock, and
pools under the test's directory, closed and deleted at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.catalog import Catalog
from tests.unit.pool.pool_opener import PoolOpener, opened_pools
from tests.unit.server.catalog_fixture import FakeClock, opened


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def catalog(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Catalog]:
    async with opened(tmp_path / "catalog.sqlite", clock) as cat:
        yield cat


@pytest.fixture
async def pools(tmp_path: Path) -> AsyncIterator[PoolOpener]:
    async with opened_pools(tmp_path / "pools") as opener:
        yield opener
