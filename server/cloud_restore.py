"""Restore from the cloud: re-seed one RP from the vault into the pool, then the normal
agent restore of it.

`Start-Restore -FromCloud` (``"from_cloud": true``), or a restore of an RP whose disk copy
is gone but which the vault holds, runs as one restore job, in order:

  1. the job is created held (server/jobs.py): running on the server, not dispatched,
     progress phase ``reseed``;
  2. the online RP's manifest is read and checked against the vault's head catalog
     (a rolled-back or altered manifest is refused) and must copy the disk RP the
     catalog row names;
  3. `VaultReader.restore_into_pool` fetches only the chunks of that RP the pool lacks,
     by ranged GETs; every blob is authenticated and hashed against its chunk id, so a
     wrong or tampered object fails the job (TamperedObjectError), never bytes in the pool;
     the pool record is written last (the pool's commit);
  4. the RP row is added to the catalog (with the agent and data source its labels name);
     the requested items are checked against the RP;
  5. the job is released: dispatched to the target agent, which restores through the data
     plane from the pool as for any restore (progress phase ``restore``).

A failure in 2-4 fails the job with the reason. A re-seeded RP stays in the pool: it is an
ordinary disk RP from then on (retention and GC treat it as such).

The cloud policy (server/cloud_gate.py): the start is refused (`CloudPolicyRefused`) unless
a restore from cloud is allowed; steps 1-4 are the restore from cloud (the re-seed task is
registered with the job manager, which cancels it if the policy stops the job: its pool
session is aborted, chunks fetched so far stay unreferenced until GC); from step 5 the job
is a restore from disk, like any restore of a pool RP.

Stop-Job on the held job (server/jobs.py `cancel`) ends it ``cancelled``, then cancels the
re-seed task and waits for it. Cancelled before the pool commit, the re-seed leaves only
unreferenced chunks (GC takes them). Cancelled while the pool writes the RP's record, the
write ends first (reader.py), and if the record is there its catalog row is added before
the cancellation goes on (storage_pool/settle.py): a pool RP never lacks its row. Such an RP is
a complete copy of the online RP, kept as an ordinary disk RP.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from server.catalog import Catalog
from server.catalog_errors import NotFoundError
from server.catalog_online import OnlineRecoveryPointRow
from server.cloud_status import Operation
from server.context import ServerContext
from server.vault_registry import VaultRegistry
from server.vault_sync import registered_vault
from storage_pool import StoragePool
from storage_pool.errors import RecoveryPointNotFoundError
from storage_pool.recovery_point import RecoveryPoint
from storage_pool.settle import settle
from storage_pool.vault.format import ObjectKind
from storage_pool.vault.format_errors import TamperedObjectError
from storage_pool.vault.reader import ReseedResult, VaultReader

__all__ = [
    "CloudRestoreError",
    "ReseedOutcome",
    "disk_copy_gone",
    "find_online_rp",
    "in_pool",
    "reseed",
    "run_cloud_restore",
    "start_cloud_restore",
]

log = structlog.get_logger()

# Background re-seeds, referenced until they end (the loop keeps only weak references).
_TASKS: set[asyncio.Task[None]] = set()


class CloudRestoreError(Exception):
    """A restore from the cloud that cannot go on; the message names why."""


@dataclass(frozen=True, slots=True)
class ReseedOutcome:
    online_rp_id: str
    recovery_point: RecoveryPoint
    result: ReseedResult


async def find_online_rp(catalog: Catalog, ref: str) -> OnlineRecoveryPointRow | None:
    """The online RP `ref` names: its own id, else the newest live copy of disk RP `ref`."""
    try:
        return await catalog.get_online_rp(ref)
    except NotFoundError:
        pass
    copies = await catalog.online_rps_of_disk_rp(ref)
    return copies[0] if copies else None


async def in_pool(pool: StoragePool, rp_id: str) -> bool:
    try:
        await pool.get_recovery_point(rp_id)
    except (RecoveryPointNotFoundError, ValueError):
        return False
    return True


async def disk_copy_gone(catalog: Catalog, pool: StoragePool, ref: str) -> bool:
    """True when `ref` is not an RP of the pool but the vault holds a copy of it."""
    row = await find_online_rp(catalog, ref)
    if row is None:
        return False
    return not await in_pool(pool, row.disk_rp_id or ref)


async def reseed(
    registry: VaultRegistry, pool: StoragePool, catalog: Catalog, row: OnlineRecoveryPointRow
) -> ReseedOutcome:
    """Steps 2-4 of the module docstring for the online RP `row`."""
    async with registered_vault(registry) as vault:
        reader = VaultReader(vault)
        orp = await reader.open_manifest(row.id)
        if row.disk_rp_id is not None and orp.id != row.disk_rp_id:
            raise TamperedObjectError(
                row.id,
                ObjectKind.MANIFEST,
                f"copies recovery point {orp.id}, but the catalog recorded {row.disk_rp_id}",
            )
        try:
            result = await reader.restore_into_pool(pool, orp)
        except asyncio.CancelledError:
            # The record write, if it began, has ended: its row must not be left out.
            if await settle(in_pool(pool, orp.id), name=f"reseed-check-{orp.id}"):
                await settle(_add_row(pool, catalog, orp.id), name=f"reseed-row-{orp.id}")
                log.warning("reseed_cancelled_after_commit", online_rp_id=row.id, rp_id=orp.id)
            raise
    rp = await settle(_add_row(pool, catalog, orp.id), name=f"reseed-row-{orp.id}")
    log.info(
        "recovery_point_reseeded",
        online_rp_id=row.id,
        rp_id=rp.id,
        chunks=result.chunks,
        chunks_fetched=result.chunks_fetched,
        already_present=result.already_present,
    )
    return ReseedOutcome(row.id, rp, result)


async def _add_row(pool: StoragePool, catalog: Catalog, rp_id: str) -> RecoveryPoint:
    """The catalog row of re-seeded pool RP `rp_id` (and its agent and data source)."""
    rp = await pool.get_recovery_point(rp_id)
    await catalog.ensure_recovery_point_owner(rp)
    await catalog.add_recovery_point(rp)
    return rp


async def _check_items(pool: StoragePool, rp: RecoveryPoint, items: Sequence[str]) -> None:
    for item in items:
        try:
            await pool.find_entry(rp, os.fsencode(item.strip("/")))
        except KeyError:
            raise CloudRestoreError(f"item {item!r} is not in recovery point {rp.id}") from None


async def run_cloud_restore(
    ctx: ServerContext, registry: VaultRegistry, job_id: str, row: OnlineRecoveryPointRow
) -> None:
    """The server phase of a held restore job, then its release (or its failure)."""
    jobs = ctx.job_manager()
    job = await ctx.catalog.get_job(job_id)
    items = [str(i) for i in job.params.get("items") or []]
    try:
        await ctx.catalog.update_progress(job.id, {"phase": "reseed"})
        outcome = await reseed(registry, ctx.pool, ctx.catalog, row)
        await _check_items(ctx.pool, outcome.recovery_point, items)
    except asyncio.CancelledError:
        await asyncio.shield(jobs.fail_held(job_id, "the server stopped while re-seeding"))
        raise
    except Exception as err:
        reason = f"restore from the cloud of {row.id}: {type(err).__name__}: {err}"
        log.error("cloud_restore_failed", job_id=job_id, online_rp_id=row.id, error=str(err))
        await jobs.fail_held(job_id, reason)
        return
    res = outcome.result
    await ctx.catalog.update_progress(
        job.id,
        {
            "phase": "restore",
            "files_total": outcome.recovery_point.files,
            "bytes_total": outcome.recovery_point.logical_bytes,
        },
    )
    log.info(
        "cloud_restore_reseeded",
        job_id=job_id,
        rp_id=outcome.recovery_point.id,
        chunks_fetched=res.chunks_fetched,
    )
    jobs.release_held(job_id)


async def start_cloud_restore(
    ctx: ServerContext,
    registry: VaultRegistry,
    ref: str,
    *,
    items: list[str],
    target_path: str,
    conflict: str,
    target_agent: str | None,
) -> Any:
    """Create the held restore job for online RP (or disk RP) `ref` and start its server
    phase in the background; NotFoundError if the vault holds no copy of `ref`;
    CloudPolicyRefused if the cloud policy does not allow a restore from cloud now."""
    if ctx.cloud_gate is not None:
        ctx.cloud_gate.check(Operation.RESTORE_FROM_CLOUD)
    row = await find_online_rp(ctx.catalog, ref)
    if row is None:
        raise NotFoundError("online recovery point", ref)
    if row.disk_rp_id is None:
        raise CloudRestoreError(f"online recovery point {row.id} names no disk recovery point")
    ds = await ctx.catalog.get_data_source(row.data_source_id)
    target = await ctx.catalog.get_agent(target_agent if target_agent else ds.agent_id)
    params = {
        "rp_id": row.disk_rp_id,
        "online_rp_id": row.id,
        "from_cloud": True,
        "data_source_id": row.data_source_id,
        "source_agent_id": ds.agent_id,
        "items": items,
        "target_path": target_path,
        "conflict": conflict,
    }
    jobs = ctx.job_manager()
    job = await jobs.start_restore(target.id, params, hold=True)
    log.info("cloud_restore_started", job_id=job.id, online_rp_id=row.id, rp_id=row.disk_rp_id)
    task = asyncio.create_task(
        run_cloud_restore(ctx, registry, job.id, row), name=f"cloud-restore-{job.id}"
    )
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    jobs.hold_task(job.id, task)
    return job
