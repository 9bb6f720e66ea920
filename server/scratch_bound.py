"""The scratch bound: how many bytes online backup jobs may stage at once, and its alert.

Bound = ``scratch.bound_percent`` of the protected data, where the protected data is the
sum of the logical sizes of the newest disk RP of every protected data source (a data
source in a live protection group); never less than ``scratch.min_bytes``; when
``scratch.max_bytes`` is above 0 it caps the result (an explicit operator override wins
over the floor).

`ScratchGuard.check` compares the bound with what the scratch filesystem can hold (its
free space plus what scratch files already use, since those are the job's own bytes) and
opens the `SCRATCH_TOO_SMALL` alert when it cannot hold the bound, resolving it when it
can. The daemon calls it at start-up and then every scheduler tick, which covers policy
changes (a group gaining or losing members changes the protected data).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import structlog

from server.config import ScratchSettings, ServerConfig
from server.ids import DataSourceId
from server.retention import DiskRp, RetentionView
from storage_pool.vault.scratch import clean_scratch, scratch_usage

if TYPE_CHECKING:
    from server.alerts import AlertCenter
    from server.catalog import Catalog

__all__ = [
    "SCRATCH_SUBJECT",
    "SCRATCH_TOO_SMALL",
    "ScratchCheck",
    "ScratchGuard",
    "compute_bound",
    "protected_bytes",
    "scratch_capacity",
]

log = structlog.get_logger()

SCRATCH_TOO_SMALL: Final = "scratch_too_small"
SCRATCH_SUBJECT: Final = "scratch"


def protected_bytes(
    rps: Sequence[DiskRp], protected: Mapping[DataSourceId, object] | set[DataSourceId]
) -> int:
    """Sum of the logical bytes of the newest RP of each protected data source."""
    newest: dict[DataSourceId, DiskRp] = {}
    for rp in rps:
        if rp.data_source_id not in protected:
            continue
        best = newest.get(rp.data_source_id)
        if best is None or (rp.created_at, rp.id) > (best.created_at, best.id):
            newest[rp.data_source_id] = rp
    return sum(rp.logical_bytes for rp in newest.values())


def compute_bound(protected: int, settings: ScratchSettings) -> int:
    """The scratch bound in bytes for `protected` bytes of protected data."""
    bound = max(protected * settings.bound_percent // 100, settings.min_bytes)
    if settings.max_bytes > 0:
        bound = min(bound, settings.max_bytes)
    return bound


def bound_of_view(view: RetentionView, settings: ScratchSettings) -> tuple[int, int]:
    """(protected bytes, bound) from the catalog's retention snapshot."""
    protected = protected_bytes(view.recovery_points, set(view.policies))
    return protected, compute_bound(protected, settings)


def scratch_capacity(scratch_dir: Path) -> int:
    """Bytes the scratch area could grow to: free space plus its current pack files
    (blocking)."""
    scratch_dir.mkdir(parents=True, exist_ok=True)
    st = os.statvfs(scratch_dir)
    return st.f_bavail * st.f_frsize + scratch_usage(scratch_dir)


@dataclass(frozen=True, slots=True)
class ScratchCheck:
    protected_bytes: int
    bound: int
    capacity: int

    @property
    def fits(self) -> bool:
        return self.capacity >= self.bound


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


class ScratchGuard:
    """Computes the bound and keeps the `SCRATCH_TOO_SMALL` alert in step with it."""

    def __init__(
        self,
        catalog: Catalog,
        alerts: AlertCenter | None,
        config_provider: Callable[[], ServerConfig],
        *,
        capacity: Callable[[Path], int] = scratch_capacity,
    ) -> None:
        self._catalog = catalog
        self._alerts = alerts
        self._config = config_provider
        self._capacity = capacity
        self._open: bool | None = None  # None: unknown (a previous process may have opened)

    async def bound(self) -> tuple[int, int]:
        """(protected bytes, bound) now."""
        view = await self._catalog.retention_view()
        return bound_of_view(view, self._config().scratch)

    async def clean_at_start(self) -> None:
        """Empty the scratch area of crash leftovers. Partial packs are deleted; complete
        ones are left to the next online job, which adopts or uploads them (uploader.py)."""
        path = self._config().scratch_path
        packs = await asyncio.to_thread(clean_scratch, path)
        if packs:
            log.info("scratch_leftovers_kept_for_resume", packs=len(packs), path=str(path))

    async def check(self) -> ScratchCheck:
        protected, bound = await self.bound()
        capacity = await asyncio.to_thread(self._capacity, self._config().scratch_path)
        result = ScratchCheck(protected, bound, capacity)
        if self._alerts is None:
            return result
        if not result.fits:
            if self._open is not True:
                await self._alerts.open(
                    SCRATCH_TOO_SMALL,
                    SCRATCH_SUBJECT,
                    f"the scratch area {self._config().scratch_path} can hold {_gib(capacity)}"
                    f" but online backups need up to {_gib(bound)}"
                    f" ({self._config().scratch.bound_percent}% of {_gib(protected)} of"
                    " protected data, or the [scratch] floor): free space there or set"
                    " [scratch] path or max_bytes",
                    details={"bound": bound, "capacity": capacity, "protected_bytes": protected},
                )
                log.warning("scratch_too_small", bound=bound, capacity=capacity)
                self._open = True
        elif self._open is not False:
            await self._alerts.resolve(SCRATCH_TOO_SMALL, SCRATCH_SUBJECT)
            self._open = False
        return result
