"""Catalog table `protection_groups`, group membership and schedule state.

A protection group is a named set of data sources sharing one disk policy and one online
policy (server/policy.py, stored as JSON). A data source belongs to at most one group
(`data_sources.protection_group_id`); `protected_at` is when it joined, where its schedule
starts, so a data source added at 10:07 to an hourly group is first due at 11:00, not at
every slot since the group was made.

Removal is soft: the row stays (jobs and alerts may name it), its members become
unprotected and keep their recovery points. Deleting the data is the caller's job
(server/protection.py), with a security PIN.

`schedule_state` holds, per data source, the last slot a scheduled job was created for;
the scheduler reads it through `protected_sources` and writes it with
`record_schedule_slot` in the same transaction as nothing else, after the job exists, so a
crash between the two repeats at most one slot's job creation check (the partial unique
index on active backups stops a duplicate job).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import structlog

from server.catalog_base import CatalogBase, Tx
from server.catalog_errors import (
    CatalogValidationError,
    ConflictError,
    InvalidStateError,
    NotFoundError,
)
from server.catalog_rows import (
    DATA_SOURCE_COLUMNS,
    DATA_SOURCE_FROM,
    DataSourceRow,
    check_name,
    data_source_from_row,
)
from server.catalog_sources import data_source_by_id
from server.ids import GROUP_ID_PATTERN, DataSourceId, GroupId, JobId, new_group_id
from server.policy import DiskPolicy, OnlinePolicy, disk_policy_from, online_policy_from

__all__ = ["GroupTables", "ProtectedSource", "ProtectionGroupRow"]

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class ProtectionGroupRow:
    id: GroupId
    name: str
    disk: DiskPolicy
    online: OnlinePolicy
    members: tuple[DataSourceId, ...]
    created_at: float
    updated_at: float
    removed_at: float | None


@dataclass(frozen=True, slots=True)
class ProtectedSource:
    """A data source in a live group, with what the scheduler and retention need."""

    data_source: DataSourceRow
    group_id: GroupId
    group_name: str
    disk: DiskPolicy
    online: OnlinePolicy
    protected_at: float
    last_rp_at: float | None  # creation time of its newest disk RP
    last_slot: float | None  # the last schedule slot a job was created for


_GROUP_COLUMNS = "id, name, disk_policy, online_policy, created_at, updated_at, removed_at"


async def _members(tx: Tx, group_id: str) -> tuple[DataSourceId, ...]:
    rows = await tx.all(
        "SELECT id FROM data_sources WHERE protection_group_id = ? AND removed_at IS NULL"
        " ORDER BY id",
        (group_id,),
    )
    return tuple(DataSourceId(r[0]) for r in rows)


async def _group_from(tx: Tx, r: sqlite3.Row) -> ProtectionGroupRow:
    return ProtectionGroupRow(
        id=GroupId(r[0]),
        name=r[1],
        disk=disk_policy_from(json.loads(r[2])),
        online=online_policy_from(json.loads(r[3])),
        members=await _members(tx, r[0]),
        created_at=r[4],
        updated_at=r[5],
        removed_at=r[6],
    )


async def _group(tx: Tx, ref: str) -> ProtectionGroupRow:
    """By id (removed ones too) or by name (live ones only)."""
    if GROUP_ID_PATTERN.fullmatch(ref):
        row = await tx.one(f"SELECT {_GROUP_COLUMNS} FROM protection_groups WHERE id = ?", (ref,))
    else:
        row = await tx.one(
            f"SELECT {_GROUP_COLUMNS} FROM protection_groups WHERE name = ? AND removed_at IS NULL",
            (ref,),
        )
    if row is None:
        raise NotFoundError("protection group", ref)
    return await _group_from(tx, row)


async def _check_joinable(tx: Tx, ds_ids: Iterable[str], group: GroupId | None) -> None:
    for ds_id in ds_ids:
        ds = await data_source_by_id(tx, ds_id)
        if ds is None:
            raise NotFoundError("data source", ds_id)
        if ds.removed_at is not None or ds.orphaned:
            raise InvalidStateError(
                "data source", ds_id, f"data source {ds.ref} is removed and cannot be protected"
            )
        if ds.protection_group_id is not None and ds.protection_group_id != group:
            other = await tx.one(
                "SELECT name FROM protection_groups WHERE id = ?", (ds.protection_group_id,)
            )
            raise ConflictError(
                "data source",
                ds_id,
                f"data source {ds.ref} already belongs to protection group"
                f" {other[0] if other else ds.protection_group_id!r}; a data source belongs to"
                " at most one group",
            )


async def _join(tx: Tx, group_id: GroupId, ds_ids: Iterable[str]) -> None:
    for ds_id in ds_ids:
        await tx.run(
            "UPDATE data_sources SET protection_group_id = ?, protected_at = ?"
            " WHERE id = ? AND protection_group_id IS NULL",
            (group_id, tx.now, ds_id),
        )


async def _leave(tx: Tx, group_id: GroupId, ds_ids: Iterable[str]) -> None:
    for ds_id in ds_ids:
        await tx.run(
            "UPDATE data_sources SET protection_group_id = NULL, protected_at = NULL"
            " WHERE id = ? AND protection_group_id = ?",
            (ds_id, group_id),
        )
        await tx.run("DELETE FROM schedule_state WHERE data_source_id = ?", (ds_id,))


def _check_group_name(name: str) -> str:
    name = check_name("protection group", name)
    # `get_group` reads a ref shaped like an id as an id: such a name could not be found.
    if GROUP_ID_PATTERN.fullmatch(name):
        raise CatalogValidationError(
            f"protection group name {name!r} looks like a group id (pg-...): choose another"
        )
    return name


def _unique(ids: Sequence[str], what: str) -> list[str]:
    seen: list[str] = []
    for i in ids:
        if i in seen:
            raise ConflictError("data source", i, f"data source {i} is listed twice in {what}")
        seen.append(i)
    return seen


class GroupTables(CatalogBase):
    async def create_group(
        self,
        name: str,
        disk: DiskPolicy,
        online: OnlinePolicy,
        members: Sequence[DataSourceId] = (),
    ) -> ProtectionGroupRow:
        name = _check_group_name(name)
        members = [DataSourceId(m) for m in _unique(members, "the members")]
        group_id = new_group_id()
        async with self._write() as tx:
            if await tx.one(
                "SELECT 1 FROM protection_groups WHERE name = ? AND removed_at IS NULL", (name,)
            ):
                raise ConflictError(
                    "protection group", name, f"a protection group named {name!r} exists"
                )
            await _check_joinable(tx, members, None)
            await tx.run(
                f"INSERT INTO protection_groups ({_GROUP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (
                    group_id,
                    name,
                    json.dumps(disk.to_json(), sort_keys=True),
                    json.dumps(online.to_json(), sort_keys=True),
                    tx.now,
                    tx.now,
                ),
            )
            await _join(tx, group_id, members)
            group = await _group(tx, group_id)
        log.info("protection_group_created", group=group_id, name=name, members=len(members))
        return group

    async def get_group(self, ref: str) -> ProtectionGroupRow:
        """By id (``pg-...``, removed groups too) or by name (live groups)."""
        async with self._read() as tx:
            return await _group(tx, ref)

    async def list_groups(self, *, include_removed: bool = False) -> list[ProtectionGroupRow]:
        where = "" if include_removed else " WHERE removed_at IS NULL"
        async with self._read() as tx:
            rows = await tx.all(
                f"SELECT {_GROUP_COLUMNS} FROM protection_groups{where} ORDER BY name, id"
            )
            return [await _group_from(tx, r) for r in rows]

    async def update_group(
        self,
        ref: str,
        *,
        name: str | None = None,
        disk: DiskPolicy | None = None,
        online: OnlinePolicy | None = None,
        add: Sequence[DataSourceId] = (),
        remove: Sequence[DataSourceId] = (),
    ) -> ProtectionGroupRow:
        """Change a live group whole or not at all. Removing a data source that is not a
        member is an error, as is adding one twice."""
        add = [DataSourceId(m) for m in _unique(add, "-AddDataSource")]
        remove = [DataSourceId(m) for m in _unique(remove, "-RemoveDataSource")]
        both = sorted(set(add) & set(remove))
        if both:
            raise ConflictError(
                "data source", both[0], f"data source {both[0]} is both added and removed"
            )
        async with self._write() as tx:
            group = await _group(tx, ref)
            if group.removed_at is not None:
                raise InvalidStateError(
                    "protection group", group.id, f"protection group {group.name} is removed"
                )
            if name is not None:
                name = _check_group_name(name)
                if name != group.name and await tx.one(
                    "SELECT 1 FROM protection_groups WHERE name = ? AND removed_at IS NULL",
                    (name,),
                ):
                    raise ConflictError(
                        "protection group", name, f"a protection group named {name!r} exists"
                    )
            for ds_id in remove:
                if ds_id not in group.members:
                    raise InvalidStateError(
                        "data source",
                        ds_id,
                        f"data source {ds_id} is not a member of {group.name}",
                    )
            await _check_joinable(tx, [a for a in add if a not in group.members], group.id)
            await tx.run(
                "UPDATE protection_groups SET name = ?, disk_policy = ?, online_policy = ?,"
                " updated_at = ? WHERE id = ?",
                (
                    name or group.name,
                    json.dumps((disk or group.disk).to_json(), sort_keys=True),
                    json.dumps((online or group.online).to_json(), sort_keys=True),
                    tx.now,
                    group.id,
                ),
            )
            await _leave(tx, group.id, remove)
            await _join(tx, group.id, add)
            updated = await _group(tx, group.id)
        log.info("protection_group_updated", group=group.id, added=len(add), removed=len(remove))
        return updated

    async def remove_group(self, ref: str) -> ProtectionGroupRow:
        """Soft-remove a live group; its members become unprotected (their RPs stay).
        Returns the group as it was, members included."""
        async with self._write() as tx:
            group = await _group(tx, ref)
            if group.removed_at is not None:
                raise InvalidStateError(
                    "protection group", group.id, f"protection group {group.name} is removed"
                )
            await _leave(tx, group.id, group.members)
            await tx.run(
                "UPDATE protection_groups SET removed_at = ?, updated_at = ? WHERE id = ?",
                (tx.now, tx.now, group.id),
            )
        log.info("protection_group_removed", group=group.id, members=len(group.members))
        return group

    async def protected_sources(self) -> list[ProtectedSource]:
        """Every live data source in a live group, with its policy, newest RP time and
        last schedule slot; ordered by group name then data source."""
        async with self._read() as tx:
            rows = await tx.all(
                f"SELECT {DATA_SOURCE_COLUMNS}, g.id, g.name, g.disk_policy, g.online_policy,"
                " (SELECT max(created_at) FROM recovery_points r WHERE r.data_source_id = d.id),"
                " (SELECT last_slot FROM schedule_state s WHERE s.data_source_id = d.id)"
                f" FROM {DATA_SOURCE_FROM} JOIN protection_groups g"
                " ON g.id = d.protection_group_id"
                " WHERE d.removed_at IS NULL AND a.removed_at IS NULL AND g.removed_at IS NULL"
                " ORDER BY g.name, d.id"
            )
        n = len(DATA_SOURCE_COLUMNS.split(","))
        out: list[ProtectedSource] = []
        for r in rows:
            ds = data_source_from_row(r)
            out.append(
                ProtectedSource(
                    data_source=ds,
                    group_id=GroupId(r[n]),
                    group_name=r[n + 1],
                    disk=disk_policy_from(json.loads(r[n + 2])),
                    online=online_policy_from(json.loads(r[n + 3])),
                    protected_at=ds.protected_at if ds.protected_at is not None else ds.created_at,
                    last_rp_at=r[n + 4],
                    last_slot=r[n + 5],
                )
            )
        return out

    async def record_schedule_slot(
        self, data_source_id: DataSourceId, slot: float, job_id: JobId | None
    ) -> None:
        """Remember that `slot` of the data source's schedule has been served (a job was
        created, or the slot was skipped on purpose). Never moves backwards."""
        async with self._write() as tx:
            await tx.run(
                "INSERT INTO schedule_state (data_source_id, last_slot, last_job_id)"
                " VALUES (?, ?, ?) ON CONFLICT (data_source_id) DO UPDATE SET"
                " last_slot = excluded.last_slot, last_job_id = excluded.last_job_id"
                " WHERE excluded.last_slot > schedule_state.last_slot",
                (data_source_id, slot, job_id),
            )

    async def group_members(self, ref: str) -> list[DataSourceRow]:
        async with self._read() as tx:
            group = await _group(tx, ref)
            rows = await tx.all(
                f"SELECT {DATA_SOURCE_COLUMNS} FROM {DATA_SOURCE_FROM}"
                " WHERE d.protection_group_id = ? AND d.removed_at IS NULL ORDER BY d.id",
                (group.id,),
            )
        return [data_source_from_row(r) for r in rows]
