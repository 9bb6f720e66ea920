"""Free space of the storage pool's filesystem and the reserve that stops new backups.

The reserve is ``max(pool.reserve_bytes, pool.reserve_percent % of the filesystem)``.
While free space is under it:

* a new backup is refused at once (`check_backup_capacity`, HTTP 507) and the
  `POOL_RESERVE` alert is open;
* a running backup fails at its next chunk upload (server/data_plane.py): its session is
  aborted, so no recovery point appears, and its job fails with `reserve_message`;
* pruning and GC keep working: they only delete.

A backup may take the pool below the reserve by what is in flight when it crosses (a few
uploads); the reserve is the room for that, for commits and for the catalog.

Free space is what an unprivileged writer gets (``f_bavail``); used percent is the
``df`` "Use%": used / (used + available).
"""

from __future__ import annotations

import asyncio
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from server.alerts import POOL_RESERVE, AlertCenter
from server.config import PoolSettings

__all__ = [
    "NO_SPACE_ERRNOS",
    "InsufficientStorageError",
    "PoolCapacity",
    "check_backup_capacity",
    "full_message",
    "is_no_space",
    "pool_capacity",
    "pool_capacity_sync",
    "report_capacity",
    "reserve_message",
    "reserve_size",
]

# Write errors that mean "the filesystem is full" rather than "the disk is broken".
NO_SPACE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True, slots=True)
class PoolCapacity:
    path: Path
    total_bytes: int
    free_bytes: int
    used_bytes: int
    reserve_bytes: int

    @property
    def used_percent(self) -> float:
        size = self.used_bytes + self.free_bytes
        return 100.0 * self.used_bytes / size if size else 0.0

    @property
    def below_reserve(self) -> bool:
        return self.free_bytes < self.reserve_bytes


class InsufficientStorageError(Exception):
    """The pool is under its free-space reserve: no new backup data (HTTP 507)."""

    def __init__(self, capacity: PoolCapacity) -> None:
        super().__init__(reserve_message(capacity))
        self.capacity = capacity


def reserve_size(total_bytes: int, settings: PoolSettings) -> int:
    return max(settings.reserve_bytes, total_bytes * settings.reserve_percent // 100)


def pool_capacity_sync(path: Path, settings: PoolSettings) -> PoolCapacity:
    """statvfs of `path` (blocking: call it from a worker thread)."""
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    return PoolCapacity(
        path=Path(path),
        total_bytes=total,
        free_bytes=st.f_bavail * st.f_frsize,
        used_bytes=(st.f_blocks - st.f_bfree) * st.f_frsize,
        reserve_bytes=reserve_size(total, settings),
    )


async def pool_capacity(path: Path, settings: PoolSettings) -> PoolCapacity:
    return await asyncio.to_thread(pool_capacity_sync, path, settings)


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


def reserve_message(c: PoolCapacity) -> str:
    """The one text every refusal and failure for the reserve carries."""
    return (
        f"storage pool {c.path} has {_gib(c.free_bytes)} free, under its reserve of"
        f" {_gib(c.reserve_bytes)}: new backups are refused until space is freed"
        " (prune, GC, or grow the filesystem)"
    )


async def report_capacity(c: PoolCapacity, alerts: AlertCenter | None) -> None:
    """Open or resolve the pool's reserve alert to match `c`."""
    if alerts is None:
        return
    if c.below_reserve:
        await alerts.open(
            POOL_RESERVE,
            str(c.path),
            reserve_message(c),
            severity="critical",
            details={"free_bytes": c.free_bytes, "reserve_bytes": c.reserve_bytes},
        )
    else:
        await alerts.resolve(POOL_RESERVE, str(c.path))


async def check_backup_capacity(
    pool_path: Path, settings: PoolSettings, alerts: AlertCenter | None = None
) -> PoolCapacity:
    """Call before creating a backup job. Raises InsufficientStorageError (its message
    says how much is free and what the reserve is) when the pool is under its reserve,
    opening the `POOL_RESERVE` alert; resolves that alert otherwise."""
    c = await pool_capacity(pool_path, settings)
    await report_capacity(c, alerts)
    if c.below_reserve:
        raise InsufficientStorageError(c)
    return c


def is_no_space(err: BaseException) -> bool:
    """True for a write error that means the filesystem (or a quota) is full."""
    return isinstance(err, OSError) and err.errno in NO_SPACE_ERRNOS


def full_message(path: Path, err: BaseException) -> str:
    """The text for a write the filesystem refused for lack of space."""
    return (
        f"storage pool {path} is full ({err}): new backups are refused until space is freed"
        " (prune, GC, or grow the filesystem)"
    )
