"""Fixtures of the storage pool tests: pools that are always closed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from pathlib import Path

import pytest

from storage_pool import StoragePool
from tests.unit.pool.pool_opener import PoolOpener

FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[FAILED] = True
    return report


@pytest.fixture
async def pools(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[PoolOpener]:
    """Pools for one test, closed at teardown. A pool holds 4096 shard directories, so
    they are deleted when the test passes (kept for a look when it fails) rather than
    left for pytest's basetemp rotation to remove in some later run."""
    opener = PoolOpener(tmp_path)
    try:
        yield opener
    finally:
        await opener.close_all()
        if not request.node.stash.get(FAILED, False):
            await opener.remove_all()


@pytest.fixture
async def pool(pools: PoolOpener) -> StoragePool:
    """A fresh pool with the default configuration and durability."""
    return await pools.create()
