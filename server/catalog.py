"""The server's catalog: agents, data sources, protection groups, jobs, recovery points,
alerts and security PINs in SQLite.

Usage::

    catalog = await Catalog.open(data_dir / "catalog.sqlite")
    try:
        await catalog.fail_unfinished_jobs()  # at server start
        ...
    finally:
        await catalog.close()

The catalog is an index of the storage pool plus the state only the server has: agent
credentials, registration tokens and job history. Agents, data sources and recovery points
can be rebuilt from the pool's RP labels (`rebuild_from_pool`); credentials cannot, so
rebuilt agents must register again.

Contracts:

* Every method is async and runs its SQL on aiosqlite's thread, never on the event loop.
* Each method is one transaction: it takes effect whole or not at all.
* Times are float unix seconds from the injected clock (`time.time` by default), read once
  per operation; recovery points keep the pool's own creation time.
* Rows are frozen dataclasses (catalog_rows.py). Errors derive from `CatalogError`
  (catalog_errors.py) and name the object and its id.
* Handlers of agent reports may call `transition_job` and `update_progress` again with the
  same report: duplicates are ignored (catalog_jobs.py).

The code is split by table: catalog_base.py (connection, pragmas, migrations,
transactions), catalog_schema.py (SQL), catalog_agents.py, catalog_sources.py,
catalog_groups.py (protection groups, membership, schedule state), catalog_jobs.py,
catalog_recovery.py (RPs and rebuild), catalog_retention.py (what pruning reads),
catalog_alerts.py, catalog_pins.py (security PINs) and catalog_online.py (online RPs).
"""

from __future__ import annotations

from server.catalog_agents import AgentTables
from server.catalog_alerts import AlertTables
from server.catalog_errors import (
    CatalogError,
    CatalogValidationError,
    ConflictError,
    InvalidStateError,
    NotFoundError,
    SecurityPinError,
    TokenError,
)
from server.catalog_groups import GroupTables, ProtectedSource, ProtectionGroupRow
from server.catalog_jobs import JobTables
from server.catalog_online import OnlineRecoveryPointRow, OnlineTables
from server.catalog_pins import PinTables
from server.catalog_recovery import RecoveryPointTables, recovery_point_labels
from server.catalog_retention import RetentionTables
from server.catalog_rows import (
    ACTIVE_STATES,
    FINAL_STATES,
    AgentRow,
    AlertRow,
    AlertSeverity,
    DataSourceRow,
    JobKind,
    JobRow,
    JobState,
    RebuildReport,
    RecoveryPointRow,
)
from server.catalog_sources import DataSourceTables

__all__ = [
    "ACTIVE_STATES",
    "FINAL_STATES",
    "AgentRow",
    "AlertRow",
    "AlertSeverity",
    "Catalog",
    "CatalogError",
    "CatalogValidationError",
    "ConflictError",
    "DataSourceRow",
    "InvalidStateError",
    "JobKind",
    "JobRow",
    "JobState",
    "NotFoundError",
    "OnlineRecoveryPointRow",
    "ProtectedSource",
    "ProtectionGroupRow",
    "RebuildReport",
    "RecoveryPointRow",
    "SecurityPinError",
    "TokenError",
    "recovery_point_labels",
]


class Catalog(
    AgentTables,
    AlertTables,
    DataSourceTables,
    GroupTables,
    JobTables,
    OnlineTables,
    PinTables,
    RecoveryPointTables,
    RetentionTables,
):
    """The server catalog. Open with ``await Catalog.open(path, clock=...)``; close with
    ``await catalog.close()`` or ``async with``."""
