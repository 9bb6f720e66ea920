"""Catalog reads for disk retention and maintenance, and the `server_state` facts.

`retention_view` is one read transaction: the RPs, the policies of protected data sources,
online coverage and RPs in use, as server/retention.py's rule needs them. `server_state`
holds small facts that must survive a restart (when GC last ran).
"""

from __future__ import annotations

import json

from server.catalog_base import CatalogBase
from server.ids import DataSourceId
from server.policy import disk_policy_from, online_policy_from
from server.retention import DiskRp, RetentionView, SourcePolicy
from storage_pool import RecoveryPointId

__all__ = ["RetentionTables"]


class RetentionTables(CatalogBase):
    async def retention_view(self) -> RetentionView:
        async with self._read() as tx:
            rps = await tx.all(
                "SELECT id, data_source_id, created_at, logical_bytes FROM recovery_points"
            )
            groups = await tx.all(
                "SELECT d.id, g.disk_policy, g.online_policy FROM data_sources d"
                " JOIN protection_groups g ON g.id = d.protection_group_id"
                " WHERE d.removed_at IS NULL AND g.removed_at IS NULL"
            )
            online = await tx.all(
                "SELECT data_source_id, max(source_created_at) FROM online_recovery_points"
                " WHERE deleted_at IS NULL GROUP BY data_source_id"
            )
            restores = await tx.all(
                "SELECT json_extract(params, '$.rp_id') FROM jobs"
                " WHERE kind = 'restore' AND state IN ('queued', 'running')"
            )
        return RetentionView(
            recovery_points=[
                DiskRp(RecoveryPointId(r[0]), DataSourceId(r[1]), r[2], r[3]) for r in rps
            ],
            policies={
                DataSourceId(r[0]): SourcePolicy(
                    disk_policy_from(json.loads(r[1])), online_policy_from(json.loads(r[2]))
                )
                for r in groups
            },
            online_covered_until={DataSourceId(r[0]): r[1] for r in online},
            in_use=frozenset(RecoveryPointId(r[0]) for r in restores if isinstance(r[0], str)),
        )

    async def get_server_state(self, key: str) -> str | None:
        async with self._read() as tx:
            row = await tx.one("SELECT value FROM server_state WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    async def set_server_state(self, key: str, value: str | None) -> None:
        """Store `value` under `key`; None deletes it."""
        async with self._write() as tx:
            if value is None:
                await tx.run("DELETE FROM server_state WHERE key = ?", (key,))
            else:
                await tx.run(
                    "INSERT INTO server_state (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
