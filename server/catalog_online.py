"""Catalog tables `online_recovery_points` and `online_schedule_state`.

An online RP row records that the vault holds a copy of a disk RP: its id is the vault
manifest's object name (opaque), `source_created_at` the creation time of the disk RP it
copies. The vault is the truth: rows are added after the vault's catalog commit, and a
fresh server fills them from the vault (`add_online_rp` is idempotent by id). A row with
`deleted_at` set is an online RP that retention soft-deleted, that the vault lost, or
that went with a deprovisioned vault; listings leave deleted rows out unless asked.

The disk-retention rule (server/retention.py) reads these rows: a disk RP of a group with
online protection is kept until an online RP with ``source_created_at >= created_at``
exists.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from server.catalog_base import CatalogBase
from server.catalog_errors import NotFoundError
from server.ids import DataSourceId, JobId

__all__ = ["OnlineRecoveryPointRow", "OnlineTables"]

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class OnlineRecoveryPointRow:
    id: str  # the vault manifest's object name
    data_source_id: DataSourceId
    disk_rp_id: str | None
    source_created_at: float
    created_at: float
    logical_bytes: int
    job_id: JobId | None
    sequence: int | None
    deleted_at: float | None


_COLUMNS = (
    "id, data_source_id, disk_rp_id, source_created_at, created_at, logical_bytes, job_id,"
    " sequence, deleted_at"
)


def _row(r: sqlite3.Row) -> OnlineRecoveryPointRow:
    return OnlineRecoveryPointRow(
        id=r[0],
        data_source_id=DataSourceId(r[1]),
        disk_rp_id=r[2],
        source_created_at=r[3],
        created_at=r[4],
        logical_bytes=r[5],
        job_id=None if r[6] is None else JobId(r[6]),
        sequence=r[7],
        deleted_at=r[8],
    )


class OnlineTables(CatalogBase):
    async def add_online_rp(
        self,
        rp_id: str,
        data_source_id: DataSourceId,
        *,
        disk_rp_id: str | None,
        source_created_at: float,
        created_at: float,
        logical_bytes: int,
        job_id: JobId | None = None,
        sequence: int | None = None,
    ) -> OnlineRecoveryPointRow:
        """Record an online RP; a second call with the same id returns the stored row."""
        async with self._write() as tx:
            if not await tx.one("SELECT 1 FROM data_sources WHERE id = ?", (data_source_id,)):
                raise NotFoundError("data source", data_source_id)
            await tx.run(
                f"INSERT INTO online_recovery_points ({_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL) ON CONFLICT (id) DO NOTHING",
                (
                    rp_id,
                    data_source_id,
                    disk_rp_id,
                    source_created_at,
                    created_at,
                    logical_bytes,
                    job_id,
                    sequence,
                ),
            )
            row = await tx.one(
                f"SELECT {_COLUMNS} FROM online_recovery_points WHERE id = ?", (rp_id,)
            )
        assert row is not None  # written or found in this transaction
        return _row(row)

    async def get_online_rp(self, rp_id: str) -> OnlineRecoveryPointRow:
        async with self._read() as tx:
            row = await tx.one(
                f"SELECT {_COLUMNS} FROM online_recovery_points WHERE id = ?", (rp_id,)
            )
        if row is None:
            raise NotFoundError("online recovery point", rp_id)
        return _row(row)

    async def list_online_rps(
        self, data_source_id: DataSourceId | None = None, *, include_deleted: bool = False
    ) -> list[OnlineRecoveryPointRow]:
        """Newest first."""
        where, params = ["1 = 1"], []
        if data_source_id is not None:
            where.append("data_source_id = ?")
            params.append(data_source_id)
        if not include_deleted:
            where.append("deleted_at IS NULL")
        async with self._read() as tx:
            rows = await tx.all(
                f"SELECT {_COLUMNS} FROM online_recovery_points WHERE {' AND '.join(where)}"
                " ORDER BY source_created_at DESC, created_at DESC, id",
                params,
            )
        return [_row(r) for r in rows]

    async def online_rps_of_disk_rp(self, disk_rp_id: str) -> list[OnlineRecoveryPointRow]:
        async with self._read() as tx:
            rows = await tx.all(
                f"SELECT {_COLUMNS} FROM online_recovery_points"
                " WHERE disk_rp_id = ? AND deleted_at IS NULL ORDER BY created_at DESC",
                (disk_rp_id,),
            )
        return [_row(r) for r in rows]

    async def mark_online_rps_deleted(self, rp_ids: Iterable[str]) -> int:
        """Soft-delete rows (retention, or the vault no longer has them); returns how many
        changed."""
        ids = list(rp_ids)
        changed = 0
        async with self._write() as tx:
            for rp_id in ids:
                changed += await tx.run(
                    "UPDATE online_recovery_points SET deleted_at = ?"
                    " WHERE id = ? AND deleted_at IS NULL",
                    (tx.now, rp_id),
                )
        if changed:
            log.info("online_recovery_points_deleted", count=changed)
        return changed

    async def mark_all_online_rps_deleted(self) -> int:
        """Soft-delete every live row: the vault is deprovisioned, so its online RPs are
        gone (server/cloud_health.py). Returns how many changed."""
        async with self._write() as tx:
            changed = await tx.run(
                "UPDATE online_recovery_points SET deleted_at = ? WHERE deleted_at IS NULL",
                (tx.now,),
            )
        if changed:
            log.info("online_recovery_points_deleted", count=changed, why="vault deprovisioned")
        return changed

    async def online_slots(self) -> dict[DataSourceId, float]:
        """The last online-backup slot served, per data source."""
        async with self._read() as tx:
            rows = await tx.all("SELECT data_source_id, last_slot FROM online_schedule_state")
        return {DataSourceId(r[0]): r[1] for r in rows}

    async def record_online_slot(self, data_source_id: DataSourceId, slot: float) -> None:
        """Never moves backwards."""
        async with self._write() as tx:
            await tx.run(
                "INSERT INTO online_schedule_state (data_source_id, last_slot) VALUES (?, ?)"
                " ON CONFLICT (data_source_id) DO UPDATE SET last_slot = excluded.last_slot"
                " WHERE excluded.last_slot > online_schedule_state.last_slot",
                (data_source_id, slot),
            )
