"""Catalog table `recovery_points`, and rebuilding the catalog from the pool.

The pool is the truth (storage_pool's docstring): the server commits an RP to the pool
first, then adds its row here, so a crash in between leaves an RP the catalog lacks, which
`rebuild_from_pool` (or a later `add_recovery_point`, idempotent on the id) repairs.

Labels the server writes on every RP it commits, and that a rebuild reads back:
``agent_id``, ``agent_name``, ``data_source_id``, ``data_source_name``, ``kind``, ``spec``
(JSON text of the data source spec) and ``job_id``. A rebuild recreates missing agents
(without a credential: `needs_registration`, refused by `authenticate_agent` until they
register again) and missing data sources, then adds every RP row. It only adds rows, so
running it twice, or on a catalog that lost nothing, changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import structlog

from server.catalog_agents import free_agent_name, insert_agent
from server.catalog_base import CatalogBase, Tx
from server.catalog_errors import CatalogError, CatalogValidationError, NotFoundError
from server.catalog_rows import (
    RECOVERY_POINT_COLUMNS,
    RECOVERY_POINT_FROM,
    AgentRow,
    DataSourceRow,
    RebuildReport,
    RecoveryPointRow,
    check_file_spec,
    check_name,
    recovery_point_from_row,
    to_json,
)
from server.catalog_sources import insert_data_source
from server.ids import (
    AgentId,
    DataSourceId,
    JobId,
    parse_agent_id,
    parse_data_source_id,
    parse_job_id,
)
from storage_pool import RecoveryPoint, RecoveryPointId

__all__ = ["RecoveryPointTables", "recovery_point_labels"]

log = structlog.get_logger()


def recovery_point_labels(
    agent: AgentRow, data_source: DataSourceRow, job_id: JobId | None
) -> dict[str, str]:
    """The labels to commit an RP with, so that `rebuild_from_pool` can read it back."""
    labels = {
        "agent_id": agent.id,
        "agent_name": agent.name,
        "data_source_id": data_source.id,
        "data_source_name": data_source.name,
        "kind": data_source.kind,
        "spec": json.dumps(data_source.spec, sort_keys=True),
    }
    if job_id is not None:
        labels["job_id"] = job_id
    return labels


async def _recovery_point(tx: Tx, rp_id: str) -> RecoveryPointRow | None:
    row = await tx.one(
        f"SELECT {RECOVERY_POINT_COLUMNS} FROM {RECOVERY_POINT_FROM} WHERE r.id = ?", (rp_id,)
    )
    return None if row is None else recovery_point_from_row(row)


def _label_id(labels: Mapping[str, str], key: str, given: str | None) -> str | None:
    return given if given is not None else labels.get(key)


async def _insert_recovery_point(
    tx: Tx, rp: RecoveryPoint, ds_id: DataSourceId, job_id: JobId | None
) -> bool:
    """Add the RP row unless present, and move the agent's last backup time; True if added."""
    created = rp.created_ns / 1e9
    added = await tx.run(
        "INSERT INTO recovery_points (id, data_source_id, created_at, job_id, entries, files,"
        " logical_bytes, labels) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        (
            rp.id,
            ds_id,
            created,
            job_id,
            rp.entries,
            rp.files,
            rp.logical_bytes,
            to_json(rp.labels, "recovery point labels"),
        ),
    )
    if added:
        await tx.run(
            "UPDATE agents SET last_backup_at = max(coalesce(last_backup_at, :t), :t)"
            " WHERE id = (SELECT agent_id FROM data_sources WHERE id = :ds)",
            {"t": created, "ds": ds_id},
        )
    return bool(added)


async def _free_data_source_name(tx: Tx, agent_id: str, base: str) -> str:
    name, n = base, 1
    while await tx.one(
        "SELECT 1 FROM data_sources WHERE agent_id = ? AND name = ? AND removed_at IS NULL",
        (agent_id, name),
    ):
        n += 1
        name = f"{base}-{n}"
    return name


def _rebuilt_spec(ds_id: str, text: str) -> dict[str, object]:
    try:
        raw = json.loads(text)
        return dict(check_file_spec(raw.get("paths", ()), raw.get("excludes", ())))
    except (ValueError, AttributeError, TypeError) as err:
        # The RP still deserves a row: keep the data source, with an empty spec.
        log.warning("data_source_spec_not_rebuilt", data_source=ds_id, reason=str(err))
        return {"paths": [], "excludes": []}


async def _rebuild_one(tx: Tx, rp: RecoveryPoint, report: dict[str, int]) -> bool:
    """Rows for one RP; True if its RP row was added. Every label is checked before the
    first write, so a bad RP (KeyError, ValueError) adds nothing."""
    ds_id, job_id = await _ensure_owner(tx, rp, report)
    return await _insert_recovery_point(tx, rp, ds_id, job_id)


async def _ensure_owner(
    tx: Tx, rp: RecoveryPoint, report: dict[str, int]
) -> tuple[DataSourceId, JobId | None]:
    """The agent and data source rows the RP's labels name, created if missing."""
    labels = rp.labels
    agent_id = parse_agent_id(labels["agent_id"])
    ds_id = parse_data_source_id(labels.get("data_source_id", rp.data_source))
    job_label = labels.get("job_id")
    job_id = None if job_label is None else parse_job_id(job_label)
    agent_base = check_name("agent", labels.get("agent_name") or agent_id).replace(":", "-")
    ds_base = check_name("data source", labels.get("data_source_name") or rp.data_source)
    kind = labels.get("kind", "files")
    if kind != "files":
        raise CatalogValidationError(f"unknown data source kind {kind!r}")

    if not await tx.one("SELECT 1 FROM agents WHERE id = ?", (agent_id,)):
        name = await free_agent_name(tx, agent_base)
        await insert_agent(
            tx, agent_id, name, name, credential_hash=None, command_key=None, version=None
        )
        report["agents_created"] += 1
        log.info("agent_rebuilt", agent_id=agent_id, agent_name=name)
    if not await tx.one("SELECT 1 FROM data_sources WHERE id = ?", (ds_id,)):
        spec = _rebuilt_spec(ds_id, labels.get("spec", "{}"))
        name = await _free_data_source_name(tx, agent_id, ds_base)
        await insert_data_source(tx, ds_id, agent_id, name, kind=kind, spec=spec)
        report["data_sources_created"] += 1
    return ds_id, job_id


class RecoveryPointTables(CatalogBase):
    async def add_recovery_point(
        self,
        rp: RecoveryPoint,
        *,
        data_source_id: DataSourceId | None = None,
        job_id: JobId | None = None,
    ) -> RecoveryPointRow:
        """Record an RP committed to the pool (idempotent on its id). The data source and
        job default to the RP's ``data_source_id`` and ``job_id`` labels."""
        ds_ref = _label_id(rp.labels, "data_source_id", data_source_id)
        if ds_ref is None:
            raise CatalogValidationError(f"recovery point {rp.id} names no data source")
        job_ref = _label_id(rp.labels, "job_id", job_id)
        async with self._write() as tx:
            if not await tx.one("SELECT 1 FROM data_sources WHERE id = ?", (ds_ref,)):
                raise NotFoundError("data source", ds_ref)
            await _insert_recovery_point(
                tx, rp, DataSourceId(ds_ref), None if job_ref is None else JobId(job_ref)
            )
            row = await _recovery_point(tx, rp.id)
        if row is None:  # pragma: no cover - inserted or present in this transaction
            raise CatalogError(f"recovery point {rp.id} vanished from catalog {self.path}")
        return row

    async def get_recovery_point(self, rp_id: str) -> RecoveryPointRow:
        async with self._read() as tx:
            row = await _recovery_point(tx, rp_id)
        if row is None:
            raise NotFoundError("recovery point", rp_id)
        return row

    async def list_recovery_points(
        self, data_source_id: DataSourceId | None = None, agent_id: AgentId | None = None
    ) -> list[RecoveryPointRow]:
        """Newest first. Two RPs of one second (ids end in random hex) are ordered by when
        their rows were written, so "the latest RP" is the one committed last."""
        where: list[str] = ["1 = 1"]
        params: list[str] = []
        if data_source_id is not None:
            where.append("r.data_source_id = ?")
            params.append(data_source_id)
        if agent_id is not None:
            where.append("d.agent_id = ?")
            params.append(agent_id)
        async with self._read() as tx:
            rows = await tx.all(
                f"SELECT {RECOVERY_POINT_COLUMNS} FROM {RECOVERY_POINT_FROM}"
                f" WHERE {' AND '.join(where)} ORDER BY r.created_at DESC, r.rowid DESC",
                params,
            )
        return [recovery_point_from_row(r) for r in rows]

    async def remove_recovery_point(self, rp_id: RecoveryPointId) -> bool:
        """Delete the RP row (after the RP left the pool); False if there was none."""
        async with self._write() as tx:
            return bool(await tx.run("DELETE FROM recovery_points WHERE id = ?", (rp_id,)))

    async def ensure_recovery_point_owner(
        self, rp: RecoveryPoint, report: dict[str, int] | None = None
    ) -> DataSourceId:
        """The data source an RP's labels name, with its agent, created as
        `rebuild_from_pool` would (for an RP known from the vault, not the pool); counts go
        to `report` ("agents_created", "data_sources_created"). KeyError or ValueError for
        unusable labels, nothing written."""
        counts = report if report is not None else {}
        counts.setdefault("agents_created", 0)
        counts.setdefault("data_sources_created", 0)
        async with self._write() as tx:
            ds_id, _ = await _ensure_owner(tx, rp, counts)
        return ds_id

    async def rebuild_from_pool(self, rps: Iterable[RecoveryPoint]) -> RebuildReport:
        """Recreate missing agents, data sources and RP rows from the pool's RPs, in one
        transaction. RPs without usable labels are skipped and counted."""
        report = {"agents_created": 0, "data_sources_created": 0}
        added = skipped = 0
        async with self._write() as tx:
            for rp in rps:
                try:
                    was_added = await _rebuild_one(tx, rp, report)
                except (KeyError, ValueError) as err:  # CatalogValidationError is a ValueError
                    log.warning("recovery_point_not_rebuilt", rp_id=rp.id, reason=repr(err))
                    skipped += 1
                    continue
                added += was_added
        result = RebuildReport(
            agents_created=report["agents_created"],
            data_sources_created=report["data_sources_created"],
            recovery_points_added=added,
            recovery_points_skipped=skipped,
        )
        log.info(
            "catalog_rebuilt",
            agents_created=result.agents_created,
            data_sources_created=result.data_sources_created,
            recovery_points_added=added,
            recovery_points_skipped=skipped,
        )
        return result
