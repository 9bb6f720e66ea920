"""Operations on protection groups and recovery points that need more than the catalog:
deleting data (catalog and pool) and the security-PIN rules of destructive changes.

Deleting recovery points: the catalog row goes first, then the pool record. A crash
between the two leaves a pool record without a row; the next start's rebuild
(`Catalog.rebuild_from_pool`) adds the row back, so the RP is visible again and the next
deletion or prune removes it. The other order could leave a row pointing at data that is
gone, which a restore would only find out at run time.

A PIN is needed when an operation deletes data (removing a group with its data) or makes
recovery points expire that would not expire now: a shorter disk retention than the age
of an existing RP of a member, or adding a data source whose RPs are older than the
group's retention. Everything else is checked first and the PIN is used last, just before
the change, so a refused PIN (or any refused input) changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from server.catalog import (
    Catalog,
    DataSourceRow,
    JobRow,
    ProtectionGroupRow,
    RecoveryPointRow,
)
from server.catalog_errors import (
    CatalogValidationError,
    ConflictError,
    InvalidStateError,
    NotFoundError,
    SecurityPinError,
)
from server.ids import DataSourceId
from server.policy import DiskPolicy, OnlinePolicy, disk_policy_from, online_policy_from
from storage_pool import RecoveryPointId, StoragePool
from storage_pool.errors import RecoveryPointNotFoundError

if TYPE_CHECKING:
    from server.jobs import JobManager

__all__ = [
    "GroupBackup",
    "GroupChange",
    "backup_group",
    "delete_data_of",
    "drop_from_pool",
    "expiring_recovery_points",
    "remove_group",
    "require_pin",
    "resolve_members",
    "update_group",
]

log = structlog.get_logger()


async def drop_from_pool(pool: StoragePool, rp_ids: Iterable[RecoveryPointId]) -> int:
    """Delete the pool records of RPs whose catalog rows are already gone; a record that
    is missing already counts as done. Returns how many were deleted."""
    deleted = 0
    for rp_id in rp_ids:
        with contextlib.suppress(RecoveryPointNotFoundError):
            await pool.delete_recovery_point(rp_id)
            deleted += 1
    return deleted


async def delete_data_of(
    catalog: Catalog, pool: StoragePool, data_source_ids: Iterable[DataSourceId]
) -> list[RecoveryPointId]:
    """Delete every recovery point of the data sources, catalog row then pool record,
    one RP at a time. Returns the ids deleted from the catalog."""
    deleted: list[RecoveryPointId] = []
    for ds_id in data_source_ids:
        for rp in await catalog.list_recovery_points(data_source_id=ds_id):
            if await catalog.remove_recovery_point(rp.id):
                deleted.append(rp.id)
            await drop_from_pool(pool, [rp.id])
    return deleted


async def require_pin(catalog: Catalog, pin: str | None, purpose: str, why: str) -> None:
    """Use `pin` for `purpose`; a refusal says what needed it (`why`)."""
    try:
        await catalog.use_security_pin(pin, purpose)
    except SecurityPinError as err:
        raise SecurityPinError(err.reason, f"{err} ({why})") from err


async def resolve_members(catalog: Catalog, refs: Sequence[str]) -> list[DataSourceId]:
    """Data source refs (``agent:name`` or an id) of a request body, as ids; an unknown
    one is bad input (400), not a missing URL object."""
    out: list[DataSourceId] = []
    for ref in refs:
        try:
            out.append((await catalog.get_data_source(ref)).id)
        except NotFoundError as err:
            raise CatalogValidationError(
                f"unknown data source {ref!r}: use agent:name or a data source id"
            ) from err
    return out


def expiring_recovery_points(
    current: DiskPolicy,
    new: DiskPolicy,
    staying: Mapping[DataSourceId, Sequence[RecoveryPointRow]],
    added: Mapping[DataSourceId, Sequence[RecoveryPointRow]],
    now: float,
) -> list[RecoveryPointRow]:
    """The RPs a change would newly make expire: RPs of staying members older than a
    shortened retention, and RPs of added members older than the new retention."""
    out: list[RecoveryPointRow] = []
    limit = new.retention_seconds
    if new.retention_days < current.retention_days:
        out += [rp for rps in staying.values() for rp in rps if now - rp.created_at > limit]
    out += [rp for rps in added.values() for rp in rps if now - rp.created_at > limit]
    return sorted(out, key=lambda rp: (rp.created_at, rp.id))


@dataclass(frozen=True, slots=True)
class GroupChange:
    """A requested change of a group, as parsed from the API (policies as partial JSON)."""

    name: str | None = None
    disk: Mapping[str, Any] | None = None
    online: Mapping[str, Any] | None = None
    add: Sequence[str] = ()
    remove: Sequence[str] = ()


def _policies(
    group: ProtectionGroupRow, change: GroupChange
) -> tuple[DiskPolicy | None, OnlinePolicy | None]:
    disk = None if change.disk is None else disk_policy_from(change.disk, base=group.disk)
    online = None if change.online is None else online_policy_from(change.online, group.online)
    return disk, online


async def update_group(
    catalog: Catalog, ref: str, change: GroupChange, pin: str | None, now: float
) -> ProtectionGroupRow:
    """Apply `change` whole or not at all; a PIN is needed when it makes RPs expire."""
    group = await catalog.get_group(ref)
    if group.removed_at is not None:
        raise InvalidStateError(
            "protection group", group.id, f"protection group {group.name} is removed"
        )
    disk, online = _policies(group, change)
    add = await resolve_members(catalog, change.add)
    remove = await resolve_members(catalog, change.remove)
    new_disk = disk or group.disk
    staying = [m for m in group.members if m not in remove]
    joining = [a for a in add if a not in group.members]
    expiring = expiring_recovery_points(
        group.disk,
        new_disk,
        {m: await catalog.list_recovery_points(data_source_id=m) for m in staying},
        {a: await catalog.list_recovery_points(data_source_id=a) for a in joining},
        now,
    )
    if expiring:
        await require_pin(
            catalog,
            pin,
            f"Set-ProtectionGroup {group.name}",
            f"a disk retention of {new_disk.retention_days} days would make"
            f" {len(expiring)} recovery point(s) of {group.name} expire",
        )
    updated = await catalog.update_group(
        group.id, name=change.name, disk=disk, online=online, add=add, remove=remove
    )
    log.info(
        "protection_group_changed", group=group.id, expiring=len(expiring), pin_used=bool(expiring)
    )
    return updated


async def remove_group(
    catalog: Catalog, pool: StoragePool, ref: str, *, delete_data: bool, pin: str | None
) -> tuple[ProtectionGroupRow, list[RecoveryPointId]]:
    """Remove a live group; with `delete_data` (needs a PIN) also every RP of its
    members. Returns the group as it was and the RP ids deleted."""
    group = await catalog.get_group(ref)
    if group.removed_at is not None:
        raise InvalidStateError(
            "protection group", group.id, f"protection group {group.name} is removed"
        )
    if delete_data:
        await require_pin(
            catalog,
            pin,
            f"Remove-ProtectionGroup -DeleteData {group.name}",
            f"deleting the data of protection group {group.name}",
        )
    removed = await catalog.remove_group(group.id)
    deleted: list[RecoveryPointId] = []
    if delete_data:
        deleted = await delete_data_of(catalog, pool, removed.members)
        log.info("protection_group_data_deleted", group=group.id, recovery_points=len(deleted))
    return removed, deleted


@dataclass(frozen=True, slots=True)
class GroupBackup:
    """What `backup_group` did: the jobs it queued, and the members it left alone with
    the reason (a backup of them is already queued or running)."""

    group: ProtectionGroupRow
    jobs: list[JobRow]
    skipped: list[tuple[DataSourceRow, str]]


async def backup_group(catalog: Catalog, jobs: JobManager, ref: str) -> GroupBackup:
    """One backup job per member of a live group. A member whose backup is already
    active is reported in `skipped`, not an error for the others."""
    group = await catalog.get_group(ref)
    if group.removed_at is not None:
        raise InvalidStateError(
            "protection group", group.id, f"protection group {group.name} is removed"
        )
    members = await catalog.group_members(group.id)
    if not members:
        raise InvalidStateError(
            "protection group",
            group.id,
            f"protection group {group.name} has no data sources: add some with"
            " Set-ProtectionGroup -AddDataSource",
        )
    started: list[JobRow] = []
    skipped: list[tuple[DataSourceRow, str]] = []
    for ds in members:
        try:
            started.append(await jobs.start_backup(ds.id))
        except (ConflictError, InvalidStateError) as err:
            skipped.append((ds, f"data source {ds.ref}: {err}"))
    log.info("group_backup_started", group=group.id, jobs=len(started), skipped=len(skipped))
    return GroupBackup(group, started, skipped)
