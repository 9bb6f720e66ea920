"""Catalog table `alerts`: conditions an operator should see, open until their cause clears.

An alert is named by (kind, subject): ``("failed_job", "ds-0123456789")``,
``("pool_reserve", "/srv/pool")``. At most one alert per name is open (a partial unique
index); `open_alert` on an open name updates its severity, message and details in place
and reports that it was not new, so a rule that fires every 30 s opens one alert, not one
per evaluation. `resolve_alert` stamps `resolved_at`; the row stays as history, and the
next `open_alert` of that name opens a new alert.

The table also answers the two job questions the alert rules ask (server/alert_rules.py):
each data source's latest backup outcome, and the recent restore outcomes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import structlog

from server.catalog_base import CatalogBase, Tx
from server.catalog_errors import CatalogValidationError
from server.catalog_rows import (
    ALERT_COLUMNS,
    JOB_COLUMNS,
    AlertRow,
    AlertSeverity,
    JobRow,
    alert_from_row,
    job_from_row,
    to_json,
)
from server.ids import DataSourceId, new_alert_id

__all__ = ["AlertTables"]

log = structlog.get_logger()

MAX_MESSAGE: Final = 2000
# Outcomes a backup's "last result" can be: a cancelled job says nothing about health.
_OUTCOME_SQL: Final = "('succeeded', 'succeeded_with_warnings', 'failed')"


def _check_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 255:
        raise CatalogValidationError(f"alert {what} must be 1..255 characters: {value!r:.80}")
    return value


async def _open_alert(tx: Tx, kind: str, subject: str) -> AlertRow | None:
    row = await tx.one(
        f"SELECT {ALERT_COLUMNS} FROM alerts WHERE kind = ? AND subject = ?"
        " AND resolved_at IS NULL",
        (kind, subject),
    )
    return None if row is None else alert_from_row(row)


class AlertTables(CatalogBase):
    async def open_alert(
        self,
        kind: str,
        subject: str,
        severity: AlertSeverity | str,
        message: str,
        details: Mapping[str, Any] | None = None,
    ) -> tuple[AlertRow, bool]:
        """Open the alert (kind, subject), or update the open one; True if newly opened."""
        _check_name("kind", kind)
        _check_name("subject", subject)
        try:
            level = AlertSeverity(severity)
        except ValueError as err:
            allowed = ", ".join(s.value for s in AlertSeverity)
            raise CatalogValidationError(
                f"alert severity must be one of {allowed}: {severity!r:.40}"
            ) from err
        if not isinstance(message, str) or not message:
            raise CatalogValidationError("an alert needs a message")
        details_json = to_json(details or {}, "alert details")
        async with self._write() as tx:
            existing = await _open_alert(tx, kind, subject)
            if existing is not None:
                await tx.run(
                    "UPDATE alerts SET severity = ?, message = ?, details = ?, updated_at = ?"
                    " WHERE id = ?",
                    (level.value, message[:MAX_MESSAGE], details_json, tx.now, existing.id),
                )
            else:
                await tx.run(
                    f"INSERT INTO alerts ({ALERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                    (
                        new_alert_id(),
                        kind,
                        subject,
                        level.value,
                        message[:MAX_MESSAGE],
                        details_json,
                        tx.now,
                        tx.now,
                    ),
                )
            row = await _open_alert(tx, kind, subject)
        assert row is not None  # written in this transaction
        return row, existing is None

    async def resolve_alert(self, kind: str, subject: str) -> AlertRow | None:
        """Resolve the open alert (kind, subject); None if none was open."""
        async with self._write() as tx:
            row = await tx.one(
                "UPDATE alerts SET resolved_at = :now, updated_at = :now"
                " WHERE kind = :kind AND subject = :subject AND resolved_at IS NULL"
                f" RETURNING {ALERT_COLUMNS}",
                {"now": tx.now, "kind": kind, "subject": subject},
            )
        return None if row is None else alert_from_row(row)

    async def list_alerts(
        self, *, include_resolved: bool = False, limit: int = 1000
    ) -> list[AlertRow]:
        """Newest first; only open alerts unless `include_resolved`."""
        where = "" if include_resolved else "WHERE resolved_at IS NULL"
        async with self._read() as tx:
            rows = await tx.all(
                f"SELECT {ALERT_COLUMNS} FROM alerts {where}"
                " ORDER BY opened_at DESC, rowid DESC LIMIT ?",
                (max(0, int(limit)),),
            )
        return [alert_from_row(r) for r in rows]

    async def open_alerts_of_kind(self, kind: str) -> list[AlertRow]:
        async with self._read() as tx:
            rows = await tx.all(
                f"SELECT {ALERT_COLUMNS} FROM alerts WHERE kind = ? AND resolved_at IS NULL"
                " ORDER BY opened_at, rowid",
                (kind,),
            )
        return [alert_from_row(r) for r in rows]

    async def latest_backup_outcomes(self) -> dict[DataSourceId, JobRow]:
        """Each live data source's latest backup that succeeded or failed (cancelled
        backups are skipped), by data source id."""
        async with self._read() as tx:
            rows = await tx.all(
                f"SELECT {JOB_COLUMNS} FROM ("
                f" SELECT j.*, row_number() OVER (PARTITION BY j.data_source_id"
                "   ORDER BY j.ended_at DESC, j.rowid DESC) AS rank"
                " FROM jobs j JOIN data_sources d ON d.id = j.data_source_id"
                " WHERE d.removed_at IS NULL AND j.kind = 'backup'"
                f" AND j.state IN {_OUTCOME_SQL}"
                ") WHERE rank = 1"
            )
        return {job.data_source_id: job for job in map(job_from_row, rows) if job.data_source_id}

    async def restore_outcomes(self, limit: int = 1000) -> list[JobRow]:
        """Restores that succeeded or failed, newest first."""
        async with self._read() as tx:
            rows = await tx.all(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE kind = 'restore'"
                f" AND state IN {_OUTCOME_SQL} ORDER BY ended_at DESC, rowid DESC LIMIT ?",
                (max(0, int(limit)),),
            )
        return [job_from_row(r) for r in rows]
