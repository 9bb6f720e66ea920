"""Online retention on the server: GFS counts per group, soft delete, purge, repack.

`apply_online_retention` (cheap; after every successful online backup job, for its data
source): for each data source of a live group with online protection, the GFS set of its
live online RPs (storage_pool/vault/gfs.py, the group's daily/weekly/monthly/yearly
counts, ``scheduler.timezone``) is kept and the rest are soft-deleted in the vault by one
catalog commit (`vault_gc.apply_retention`); then their catalog rows are marked deleted.
Vault first: a crash between the two leaves rows that the next sync or retention marks.
Data sources not protected online are left alone (their RPs stay until an operator acts).

`collect_vault` (daily, from maintenance): retention for every data source, then `purge`
(what was soft-deleted at least the grace, 14 days, ago, and every unreferenced pack and
segment), then `repack` of packs that are mostly garbage (under half live) through the
scratch area (``<scratch>/repack``, bounded like an online job). A repack rewrites the
manifests of the RPs it moves under new names; the catalog rows follow by
`sync_from_vault` (new rows live, the replaced ones deleted).

One writer at a time: callers hold the runner's `writer` lock (server/online_backup.py)
around these, as every online backup job does, so a purge never deletes the packs of a
job that has not committed yet. `run_cloud_gc` takes the lock itself and records the work
as a server job (kind gc, params ``{"tier": "cloud"}``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import structlog

from server.catalog import Catalog, JobKind, JobRow, JobState
from server.catalog_rows import JobTrigger
from server.config import ServerConfig
from server.policy import resolve_timezone
from server.vault_sync import sync_from_vault
from storage_pool.vault.gfs import select_keep
from storage_pool.vault.scratch import ScratchBudget
from storage_pool.vault.vault import Vault
from storage_pool.vault.vault_gc import (
    GRACE_NS,
    PurgeResult,
    RepackResult,
    apply_retention,
    live_rps_by_source,
    purge,
    repack,
)

if TYPE_CHECKING:
    from server.online_backup import OnlineBackupRunner

__all__ = [
    "CLOUD_GC_PARAMS",
    "REPACK_THRESHOLD",
    "CloudGcReport",
    "OnlineRetentionReport",
    "apply_online_retention",
    "collect_vault",
    "run_cloud_gc",
]

log = structlog.get_logger()

REPACK_THRESHOLD: Final = 0.5  # rewrite packs less than half live
CLOUD_GC_PARAMS: Final = {"tier": "cloud"}


@dataclass(frozen=True, slots=True)
class OnlineRetentionReport:
    deleted: tuple[str, ...]  # manifest names soft-deleted in the vault
    rows_marked: int  # catalog rows marked deleted
    kept: dict[str, int]  # data source id -> live online RPs kept


@dataclass(frozen=True, slots=True)
class CloudGcReport:
    retention: OnlineRetentionReport
    purge: PurgeResult
    repack: RepackResult

    def to_json(self) -> dict[str, Any]:
        return {
            "tier": "cloud",
            "online_rps_deleted": len(self.retention.deleted),
            "manifests_purged": len(self.purge.manifests_purged),
            "packs_deleted": len(self.purge.packs_deleted),
            "segments_deleted": len(self.purge.segments_deleted),
            "bytes_reclaimed": self.purge.bytes_freed,
            "packs_repacked": len(self.repack.packs_rewritten),
            "packs_written": len(self.repack.packs_written),
            "bytes_copied": self.repack.bytes_copied,
            "manifests_rewritten": len(self.repack.manifests_rewritten),
            "catalog_generation": max(
                self.purge.catalog_generation, self.repack.catalog_generation
            ),
        }


def _ns(now: float) -> int:
    return round(now * 1e9)


async def apply_online_retention(
    catalog: Catalog,
    vault: Vault,
    config: ServerConfig,
    now: float,
    *,
    data_sources: Collection[str] | None = None,
) -> OnlineRetentionReport:
    """Keep the GFS set of each online-protected data source (all, or `data_sources`)
    and soft-delete the rest, vault first, then catalog rows. The caller holds the
    vault's writer lock."""
    tz = resolve_timezone(config.scheduler.timezone)
    when = datetime.fromtimestamp(now, UTC)
    live = await live_rps_by_source(vault)
    keep_by_source: dict[str, set[str]] = {}
    for source in await catalog.protected_sources():
        ds_id = source.data_source.id
        policy = source.online
        if not policy.enabled or ds_id not in live:
            continue
        if data_sources is not None and ds_id not in data_sources:
            continue
        keep_by_source[ds_id] = select_keep(
            live[ds_id],
            daily=policy.daily,
            weekly=policy.weekly,
            monthly=policy.monthly,
            yearly=policy.yearly,
            tz=tz,
            now=when,
        )
    result = await apply_retention(vault, keep_by_source, now_ns=_ns(now))
    marked = await catalog.mark_online_rps_deleted(result.deleted)
    report = OnlineRetentionReport(
        result.deleted, marked, {ds: len(keep) for ds, keep in keep_by_source.items()}
    )
    if result.deleted:
        log.info("online_retention_applied", deleted=len(result.deleted), rows_marked=marked)
    return report


async def collect_vault(
    catalog: Catalog,
    vault: Vault,
    config: ServerConfig,
    now: float,
    budget: ScratchBudget,
    *,
    grace_ns: int = GRACE_NS,
    threshold: float = REPACK_THRESHOLD,
) -> CloudGcReport:
    """Retention for every data source, purge after the grace, repack (module
    docstring). The caller holds the vault's writer lock."""
    retention = await apply_online_retention(catalog, vault, config, now)
    purged = await purge(vault, now_ns=_ns(now), grace_ns=grace_ns)
    repacked = await repack(
        vault,
        config.scratch_path / "repack",
        budget,
        now_ns=_ns(now),
        threshold=threshold,
        pack_size=config.online.pack_mib << 20,
    )
    if repacked.manifests_rewritten:
        await sync_from_vault(catalog, vault)
    return CloudGcReport(retention, purged, repacked)


async def run_cloud_gc(
    catalog: Catalog,
    runner: OnlineBackupRunner,
    config: ServerConfig,
    clock: Callable[[], float],
    *,
    grace_ns: int = GRACE_NS,
) -> JobRow | None:
    """One gc job (tier cloud) running `collect_vault` under the runner's writer lock;
    None when no vault is registered. The job ends succeeded or failed (with the error)."""
    if not await runner.has_vault():
        return None
    job = await catalog.create_server_job(JobKind.GC, dict(CLOUD_GC_PARAMS), JobTrigger.MAINTENANCE)
    async with runner.writer:
        await catalog.transition_job(job.id, JobState.RUNNING)
        try:
            vault = await runner.open_vault()
            _, bound = await runner.scratch.bound()
            report = await collect_vault(
                catalog, vault, config, clock(), ScratchBudget(bound), grace_ns=grace_ns
            )
        except Exception as err:
            log.warning("cloud_gc_failed", job_id=job.id, error=f"{type(err).__name__}: {err}")
            await runner.forget_vault()
            return await catalog.transition_job(
                job.id,
                JobState.FAILED,
                error=f"vault garbage collection failed: {type(err).__name__}: {err}",
            )
    result = report.to_json()
    log.info("cloud_gc_finished", job_id=job.id, **result)
    return await catalog.transition_job(job.id, JobState.SUCCEEDED, result=result)
