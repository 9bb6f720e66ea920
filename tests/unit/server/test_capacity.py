"""Pool capacity: the reserve rule, the df-style percentage, the refusal and its alert."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from server.alerts import POOL_RESERVE, AlertCenter
from server.capacity import (
    InsufficientStorageError,
    PoolCapacity,
    check_backup_capacity,
    full_message,
    is_no_space,
    pool_capacity_sync,
    reserve_message,
    reserve_size,
)
from server.catalog import Catalog
from server.config import PoolSettings
from storage_pool.errors import PoolIOError

GiB = 1 << 30
MiB = 1 << 20


@pytest.mark.parametrize(
    ("total", "reserve_bytes", "percent", "expected"),
    [
        (10 * GiB, 2 * GiB, 2, 2 * GiB),  # 2% of 10 GiB is less than 2 GiB
        (1000 * GiB, 2 * GiB, 2, 20 * GiB),  # 2% of 1000 GiB is more
        (64 * MiB, 0, 0, 0),
        (64 * MiB, 16 * MiB, 50, 32 * MiB),
    ],
)
def test_reserve_is_the_larger_of_bytes_and_percent(
    total: int, reserve_bytes: int, percent: int, expected: int
) -> None:
    settings = PoolSettings(reserve_bytes=reserve_bytes, reserve_percent=percent)
    assert reserve_size(total, settings) == expected


def test_used_percent_and_below_reserve() -> None:
    c = PoolCapacity(Path("/p"), 100 * MiB, 25 * MiB, 75 * MiB, 30 * MiB)
    assert c.used_percent == 75.0
    assert c.below_reserve
    assert not PoolCapacity(Path("/p"), 100 * MiB, 30 * MiB, 70 * MiB, 30 * MiB).below_reserve
    # Root-reserved blocks count as neither used nor free, like df's Use%.
    assert PoolCapacity(Path("/p"), 100 * MiB, 45 * MiB, 45 * MiB, 0).used_percent == 50.0
    assert PoolCapacity(Path("/p"), 0, 0, 0, 0).used_percent == 0.0


def test_the_message_says_free_reserve_and_what_to_do() -> None:
    c = PoolCapacity(Path("/x"), 100 * GiB, int(1.2 * GiB), 98 * GiB, 2 * GiB)
    assert reserve_message(c) == (
        "storage pool /x has 1.2 GiB free, under its reserve of 2.0 GiB: new backups are"
        " refused until space is freed (prune, GC, or grow the filesystem)"
    )
    small = PoolCapacity(Path("/y"), 64 * MiB, 3 * MiB, 60 * MiB, 16 * MiB)
    assert "has 3.0 MiB free, under its reserve of 16.0 MiB" in reserve_message(small)


def test_capacity_of_a_real_directory_matches_statvfs(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    c = pool_capacity_sync(tmp_path, PoolSettings(reserve_bytes=0, reserve_percent=50))
    assert c.total_bytes == st.f_blocks * st.f_frsize
    assert c.reserve_bytes == c.total_bytes * 50 // 100
    assert 0 <= c.free_bytes <= c.total_bytes
    assert 0.0 <= c.used_percent <= 100.0


def test_no_space_errors_are_told_apart() -> None:
    full = PoolIOError("storing chunk ab", OSError(errno.ENOSPC, "No space left on device"))
    quota = PoolIOError("storing chunk ab", OSError(errno.EDQUOT, "Disk quota exceeded"))
    broken = PoolIOError("storing chunk ab", OSError(errno.EIO, "Input/output error"))
    assert is_no_space(full) and is_no_space(quota)
    assert not is_no_space(broken) and not is_no_space(ValueError("x"))
    assert full_message(Path("/p"), full).startswith(
        "storage pool /p is full (storing chunk ab: No space left on device): new backups"
    )


async def test_check_refuses_and_opens_then_allows_and_resolves(
    catalog: Catalog, tmp_path: Path
) -> None:
    alerts = AlertCenter(catalog, lambda: "")
    try:
        impossible = PoolSettings(reserve_bytes=1 << 50, reserve_percent=0)
        with pytest.raises(InsufficientStorageError, match="under its reserve") as err:
            await check_backup_capacity(tmp_path, impossible, alerts)
        assert err.value.capacity.below_reserve
        (alert,) = await catalog.list_alerts()
        assert (alert.kind, alert.subject, alert.severity.value) == (
            POOL_RESERVE,
            str(tmp_path),
            "critical",
        )
        assert alert.message == str(err.value)
        none = PoolSettings(reserve_bytes=0, reserve_percent=0)
        c = await check_backup_capacity(tmp_path, none, alerts)
        assert not c.below_reserve
        assert await catalog.list_alerts() == []
    finally:
        await alerts.close()
