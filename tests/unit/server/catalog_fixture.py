"""Helpers of the catalog tests: a settable clock and catalogs that are always closed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from server.catalog import Catalog, DataSourceRow, recovery_point_labels
from storage_pool import RecoveryPoint
from storage_pool.ids import new_recovery_point_id

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


async def add_rp_row(
    catalog: Catalog, ds: DataSourceRow, created_at: float, *, logical_bytes: int = 5
) -> RecoveryPoint:
    """A catalog RP row of `ds` created at `created_at`, with no pool record behind it:
    enough for the rules that read an RP's age (retention, schedules, PIN checks)."""
    agent = await catalog.get_agent(ds.agent_id)
    rp = RecoveryPoint(
        id=new_recovery_point_id(datetime.fromtimestamp(created_at, UTC)),
        data_source=ds.id,
        created_ns=round(created_at * 1e9),
        manifest_chunks=(),
        manifest_bytes=0,
        entries=1,
        files=1,
        logical_bytes=logical_bytes,
        labels=recovery_point_labels(agent, ds, None),
    )
    await catalog.add_recovery_point(rp)
    return rp
