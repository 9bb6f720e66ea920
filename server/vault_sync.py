"""Filling the catalog from the vault: what makes a fresh server list every online RP.

The vault is the truth for online RPs (server/catalog_online.py). `sync_from_vault` lists
the vault's manifests (storage_pool/vault/reader.py: each checked against the head
catalog, so a rolled-back or altered manifest is refused, never listed) and, per manifest:

    LIVE       the agent and data source its pool record's labels name are created if
               missing (as `rebuild_from_pool` does: an agent without a credential must
               register again), then its online-RP row is added (idempotent by name);
    DELETED    the same, and the row is marked deleted (soft-deleted in the vault,
               restorable until purged);
    PENDING    written after the head catalog by a job that crashed before its commit:
               not an online RP yet, left for the next writer to adopt.

A live row whose manifest the vault no longer lists is marked deleted (the vault lost or
purged it). Rows of refused manifests are left as they are and the refusal is reported:
a tampered object must not erase what the catalog knew. Only adds and marks: running it
twice changes nothing.

`registered_vault` opens the server's registered vault (keys from the registration, no
second KDF run when the header is unchanged) through the registry's opener (the daemon's
is observed by the connection monitor, server/cloud_health.py) with its location cache
under ``<data_dir>/vault``; the cache holds the catalog generation this server has seen, which
makes a later rollback of the vault detectable.

The cloud policy (server/cloud_gate.py): reading the vault to fill the catalog is a
restore from cloud in the policy's terms, so `sync_registered` with a `gate` raises
`CloudPolicyRefused` (its message names the connectivity and the vault state) before it
opens the vault when that is not allowed. Syncs that are part of an online backup
(server/online_retention.py calls `sync_from_vault`) are that job's, gated as a backup to
cloud.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from server.catalog import Catalog
from server.catalog_errors import CatalogError
from server.cloud_status import Operation
from server.vault_registry import VaultRegistry
from storage_pool.vault.catalog import ManifestStatus
from storage_pool.vault.location_cache import LocationCache
from storage_pool.vault.reader import OnlineRecoveryPoint, VaultReader
from storage_pool.vault.vault import Vault

if TYPE_CHECKING:
    from server.cloud_gate import CloudGate

__all__ = [
    "SyncReport",
    "cache_dir_of",
    "registered_vault",
    "sync_after_register",
    "sync_from_vault",
    "sync_registered",
]

log = structlog.get_logger()


@dataclass(slots=True)
class SyncReport:
    vault_id: str
    catalog_generation: int = 0
    listed: int = 0  # live online RPs in the vault
    added: int = 0  # rows this sync created
    agents_created: int = 0
    data_sources_created: int = 0
    marked_deleted: int = 0
    pending: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (manifest, why)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (manifest, why)

    def to_json(self) -> dict[str, Any]:
        return {
            "vault_id": self.vault_id,
            "catalog_generation": self.catalog_generation,
            "listed": self.listed,
            "added": self.added,
            "agents_created": self.agents_created,
            "data_sources_created": self.data_sources_created,
            "marked_deleted": self.marked_deleted,
            "pending": self.pending,
            "skipped": [{"manifest": n, "reason": r} for n, r in self.skipped],
            "refused": [{"manifest": n, "reason": r} for n, r in self.refused],
        }


def cache_dir_of(registry: VaultRegistry) -> Path:
    return registry.data_dir / "vault"


@contextlib.asynccontextmanager
async def registered_vault(registry: VaultRegistry) -> AsyncIterator[Vault]:
    """The registered vault, open with its location cache; NotRegisteredError if none."""
    unlocked = await registry.unlocked()
    backend = registry.opener(unlocked.registration.backend)
    try:
        cache_dir = cache_dir_of(registry)
        await asyncio.to_thread(cache_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
        cache = await asyncio.to_thread(LocationCache, cache_dir, unlocked.keys.vault_id)
        vault = Vault(backend, unlocked.header, unlocked.keys, cache)
        try:
            yield vault
        finally:
            await vault.close()
    finally:
        await backend.close()


async def _record(catalog: Catalog, orp: OnlineRecoveryPoint, report: SyncReport) -> bool:
    """The rows of one listed manifest; True if its online-RP row was created."""
    rp = orp.recovery_point
    counts: dict[str, int] = {}
    try:
        ds_id = await catalog.ensure_recovery_point_owner(rp, counts)
    except (KeyError, ValueError) as err:  # labels a server never wrote
        report.skipped.append((orp.name, f"unusable labels: {err!r}"))
        log.warning("online_rp_not_synced", manifest=orp.name, rp_id=rp.id, reason=repr(err))
        return False
    report.agents_created += counts.get("agents_created", 0)
    report.data_sources_created += counts.get("data_sources_created", 0)
    existed = True
    try:
        await catalog.get_online_rp(orp.name)
    except CatalogError:
        existed = False
    await catalog.add_online_rp(
        orp.name,
        ds_id,
        disk_rp_id=rp.id,
        source_created_at=rp.created_ns / 1e9,
        created_at=orp.manifest.created_ns / 1e9,
        logical_bytes=rp.logical_bytes,
        sequence=orp.manifest.sequence,
    )
    return not existed


async def sync_from_vault(catalog: Catalog, vault: Vault) -> SyncReport:
    """Bring the catalog's online-RP rows in line with the vault (module docstring).
    RollbackError (the vault's catalogs were rolled back) and backend errors propagate."""
    listing = await VaultReader(vault).list_online_rps()
    report = SyncReport(vault.header.vault_id_hex, listing.catalog_generation)
    report.refused = list(listing.refused)
    seen: set[str] = set()
    deleted: list[str] = []
    for orp in listing.rps:
        if orp.status is ManifestStatus.PENDING:
            report.pending += 1
            continue
        seen.add(orp.name)
        report.added += await _record(catalog, orp, report)
        if orp.status is ManifestStatus.LIVE:
            report.listed += 1
        else:
            deleted.append(orp.name)
    refused = {name for name, _ in listing.refused}
    for row in await catalog.list_online_rps():
        if row.id not in seen and row.id not in refused:
            deleted.append(row.id)
    report.marked_deleted = await catalog.mark_online_rps_deleted(deleted)
    log.info(
        "vault_synced",
        vault_id=report.vault_id,
        generation=report.catalog_generation,
        listed=report.listed,
        added=report.added,
        agents_created=report.agents_created,
        data_sources_created=report.data_sources_created,
        marked_deleted=report.marked_deleted,
        pending=report.pending,
        skipped=len(report.skipped),
        refused=len(report.refused),
    )
    for name, why in report.refused:
        log.error("vault_manifest_refused", manifest=name, reason=why)
    return report


async def sync_registered(
    registry: VaultRegistry, catalog: Catalog, *, gate: CloudGate | None = None
) -> SyncReport:
    """`sync_from_vault` on the registered vault; NotRegisteredError if there is none,
    CloudPolicyRefused if `gate` does not allow a restore from cloud now."""
    if gate is not None:
        gate.check(Operation.RESTORE_FROM_CLOUD)
    async with registered_vault(registry) as vault:
        return await sync_from_vault(catalog, vault)


async def sync_after_register(registry: VaultRegistry, catalog: Catalog) -> dict[str, Any]:
    """After Register-Vault: the sync report, or the error (the registration stands)."""
    try:
        return (await sync_registered(registry, catalog)).to_json()
    except Exception as err:
        log.error("vault_sync_failed", when="register", error=f"{type(err).__name__}: {err}")
        return {"error": f"{type(err).__name__}: {err}"}
