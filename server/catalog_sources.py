"""Catalog table `data_sources`: what an agent protects (kind "files": paths and excludes).

A data source is referred to by id (``ds-...``) or as ``agentname:dsname``; its name
defaults to its first path, so ``web01:/srv`` is the usual reference. Removal is soft:
rows stay for the recovery points that point at them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import structlog

from server.catalog_base import CatalogBase, Tx
from server.catalog_errors import ConflictError, InvalidStateError, NotFoundError
from server.catalog_rows import (
    AGENT_COLUMNS,
    DATA_SOURCE_COLUMNS,
    DATA_SOURCE_FROM,
    DataSourceRow,
    agent_from_row,
    check_file_spec,
    check_name,
    data_source_from_row,
)
from server.ids import DATA_SOURCE_ID_PATTERN, AgentId, DataSourceId, new_data_source_id
from storage_pool import RecoveryPointId

__all__ = [
    "DataSourceTables",
    "data_source_by_id",
    "insert_data_source",
    "remove_data_source_rows",
]

log = structlog.get_logger()


async def data_source_by_id(tx: Tx, ds_id: str) -> DataSourceRow | None:
    row = await tx.one(
        f"SELECT {DATA_SOURCE_COLUMNS} FROM {DATA_SOURCE_FROM} WHERE d.id = ?", (ds_id,)
    )
    return None if row is None else data_source_from_row(row)


async def insert_data_source(
    tx: Tx,
    ds_id: DataSourceId,
    agent_id: AgentId,
    name: str,
    *,
    kind: str,
    spec: dict[str, object],
) -> None:
    await tx.run(
        "INSERT INTO data_sources (id, agent_id, name, kind, spec, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (ds_id, agent_id, name, kind, json.dumps(spec, sort_keys=True), tx.now),
    )


async def remove_data_source_rows(
    tx: Tx, ds_id: str, *, delete_data: bool
) -> list[RecoveryPointId]:
    """Mark the data source removed; with `delete_data` also delete its RP rows and return
    their ids."""
    await tx.run(
        # A removed data source leaves its protection group: nothing schedules it any more.
        "UPDATE data_sources SET removed_at = ?, protection_group_id = NULL, protected_at = NULL"
        " WHERE id = ? AND removed_at IS NULL",
        (tx.now, ds_id),
    )
    if not delete_data:
        return []
    rows = await tx.all("SELECT id FROM recovery_points WHERE data_source_id = ?", (ds_id,))
    await tx.run("DELETE FROM recovery_points WHERE data_source_id = ?", (ds_id,))
    return [RecoveryPointId(r[0]) for r in rows]


class DataSourceTables(CatalogBase):
    async def add_data_source(
        self,
        agent_id: AgentId,
        name: str | None,
        paths: Sequence[str],
        excludes: Sequence[str] = (),
    ) -> DataSourceRow:
        """A "files" data source of the agent; `name` defaults to the first path."""
        spec = check_file_spec(paths, excludes)
        name = check_name("data source", spec["paths"][0] if name is None else name)
        ds_id = new_data_source_id()
        async with self._write() as tx:
            row = await tx.one(f"SELECT {AGENT_COLUMNS} FROM agents a WHERE a.id = ?", (agent_id,))
            if row is None:
                raise NotFoundError("agent", agent_id)
            agent = agent_from_row(row)
            if agent.removed_at is not None:
                raise InvalidStateError("agent", agent_id, f"agent {agent.name} is removed")
            if await tx.one(
                "SELECT 1 FROM data_sources WHERE agent_id = ? AND name = ? AND removed_at IS NULL",
                (agent_id, name),
            ):
                raise ConflictError(
                    "data source",
                    f"{agent.name}:{name}",
                    f"agent {agent.name} already has a data source named {name!r}",
                )
            await insert_data_source(tx, ds_id, agent_id, name, kind="files", spec=dict(spec))
            ds = await data_source_by_id(tx, ds_id)
        assert ds is not None  # written in this transaction
        log.info("data_source_added", data_source=ds_id, agent_id=agent_id)
        return ds

    async def get_data_source(self, ref: str) -> DataSourceRow:
        """By id, or by ``agent:name`` where agent is an agent's name or id. A name finds
        only data sources that are not removed."""
        async with self._read() as tx:
            ds: DataSourceRow | None = None
            if DATA_SOURCE_ID_PATTERN.fullmatch(ref):
                ds = await data_source_by_id(tx, ref)
            elif ":" in ref:
                agent_ref, name = ref.split(":", 1)
                row = await tx.one(
                    f"SELECT {DATA_SOURCE_COLUMNS} FROM {DATA_SOURCE_FROM}"
                    " WHERE d.name = ? AND d.removed_at IS NULL"
                    " AND (a.id = ? OR (a.name = ? AND a.removed_at IS NULL))"
                    " ORDER BY a.removed_at IS NOT NULL LIMIT 1",
                    (name, agent_ref, agent_ref),
                )
                ds = None if row is None else data_source_from_row(row)
        if ds is None:
            raise NotFoundError("data source", ref)
        return ds

    async def list_data_sources(
        self, agent_id: AgentId | None = None, *, include_removed: bool = False
    ) -> list[DataSourceRow]:
        """Data sources by agent name then name; orphaned ones (agent removed) included."""
        where = ["1 = 1"]
        params: list[object] = []
        if agent_id is not None:
            where.append("d.agent_id = ?")
            params.append(agent_id)
        if not include_removed:
            where.append("d.removed_at IS NULL")
        async with self._read() as tx:
            rows = await tx.all(
                f"SELECT {DATA_SOURCE_COLUMNS} FROM {DATA_SOURCE_FROM}"
                f" WHERE {' AND '.join(where)} ORDER BY a.name, d.name, d.id",
                params,
            )
        return [data_source_from_row(r) for r in rows]

    async def remove_data_source(
        self, ds_id: DataSourceId, *, delete_data: bool = False
    ) -> list[RecoveryPointId]:
        """Soft-delete the data source. With `delete_data` its RP rows go too; the returned
        RP ids are the ones the caller must delete from the pool."""
        async with self._write() as tx:
            if await data_source_by_id(tx, ds_id) is None:
                raise NotFoundError("data source", ds_id)
            dropped = await remove_data_source_rows(tx, ds_id, delete_data=delete_data)
        log.info("data_source_removed", data_source=ds_id, recovery_points_dropped=len(dropped))
        return dropped
