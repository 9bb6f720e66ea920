"""Rows the catalog returns (frozen dataclasses), job states, and input validation.

Everything here is pure: no SQL connection, no I/O. `*_from_row` functions turn a
``sqlite3.Row`` of the matching SELECT (the column lists below) into a dataclass.
"""

from __future__ import annotations

import enum
import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from server.catalog_errors import CatalogValidationError
from server.ids import AgentId, AlertId, DataSourceId, JobId
from storage_pool import RecoveryPointId

MAX_NAME = 255


class JobKind(enum.StrEnum):
    BACKUP = "backup"
    RESTORE = "restore"
    ONLINE_BACKUP = "online_backup"
    PRUNE = "prune"
    GC = "gc"
    VERIFY = "verify"


# Jobs the server runs itself, without an agent.
SERVER_JOB_KINDS: Final = frozenset(
    {JobKind.PRUNE, JobKind.GC, JobKind.VERIFY, JobKind.ONLINE_BACKUP}
)


class JobTrigger(enum.StrEnum):
    """Why a job exists."""

    MANUAL = "manual"  # an operator asked
    SCHEDULE = "schedule"  # a protection group's schedule slot
    MISSED = "missed"  # slots passed while the server was down: one catch-up run
    RETRY = "retry"  # a transient failure of an earlier attempt
    MAINTENANCE = "maintenance"  # prune and gc the server runs on its own


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    SUCCEEDED_WITH_WARNINGS = "succeeded_with_warnings"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES: Final = frozenset(
    {JobState.SUCCEEDED, JobState.SUCCEEDED_WITH_WARNINGS, JobState.FAILED, JobState.CANCELLED}
)
ACTIVE_STATES: Final = frozenset({JobState.QUEUED, JobState.RUNNING})
# Legal moves. A final state has none: a later report for a finished job is a duplicate
# (MQTT QoS 1 delivers at least once) and is ignored, not an error.
NEXT_STATES: Final[Mapping[JobState, frozenset[JobState]]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: FINAL_STATES,
}


@dataclass(frozen=True, slots=True)
class AgentRow:
    id: AgentId
    name: str
    hostname: str
    created_at: float
    last_seen_at: float | None
    online: bool
    state_changed_at: float | None
    version: str | None
    last_backup_at: float | None
    removed_at: float | None
    # Rebuilt from the pool: no credential is known, the agent must register again.
    needs_registration: bool
    # Secret shared with the agent; kept out of repr so a logged row does not leak it.
    command_key: str | None = field(repr=False)


AGENT_COLUMNS: Final = (
    "a.id, a.name, a.hostname, a.created_at, a.last_seen_at, a.online, a.state_changed_at,"
    " a.version, a.last_backup_at, a.removed_at, a.credential_hash IS NULL, a.command_key"
)


def agent_from_row(r: sqlite3.Row) -> AgentRow:
    return AgentRow(
        id=AgentId(r[0]),
        name=r[1],
        hostname=r[2],
        created_at=r[3],
        last_seen_at=r[4],
        online=bool(r[5]),
        state_changed_at=r[6],
        version=r[7],
        last_backup_at=r[8],
        removed_at=r[9],
        needs_registration=bool(r[10]),
        command_key=r[11],
    )


@dataclass(frozen=True, slots=True)
class DataSourceRow:
    id: DataSourceId
    agent_id: AgentId
    agent_name: str
    name: str
    kind: str
    paths: tuple[str, ...]
    excludes: tuple[str, ...]
    created_at: float
    removed_at: float | None
    # Its agent was removed but its recovery points were kept.
    orphaned: bool
    protection_group_id: str | None = None
    # When it joined its protection group: its schedule starts there.
    protected_at: float | None = None

    @property
    def spec(self) -> dict[str, list[str]]:
        return {"paths": list(self.paths), "excludes": list(self.excludes)}

    @property
    def ref(self) -> str:
        """The human reference `get_data_source` accepts: ``agentname:dsname``."""
        return f"{self.agent_name}:{self.name}"


DATA_SOURCE_COLUMNS: Final = (
    "d.id, d.agent_id, a.name, d.name, d.kind, d.spec, d.created_at, d.removed_at,"
    " a.removed_at IS NOT NULL, d.protection_group_id, d.protected_at"
)
DATA_SOURCE_FROM: Final = "data_sources d JOIN agents a ON a.id = d.agent_id"


def data_source_from_row(r: sqlite3.Row) -> DataSourceRow:
    spec = json.loads(r[5])
    return DataSourceRow(
        id=DataSourceId(r[0]),
        agent_id=AgentId(r[1]),
        agent_name=r[2],
        name=r[3],
        kind=r[4],
        paths=tuple(spec.get("paths", ())),
        excludes=tuple(spec.get("excludes", ())),
        created_at=r[6],
        removed_at=r[7],
        orphaned=bool(r[8]),
        protection_group_id=r[9],
        protected_at=r[10],
    )


@dataclass(frozen=True, slots=True)
class JobRow:
    id: JobId
    kind: JobKind
    state: JobState
    agent_id: AgentId | None  # None for server jobs (prune, gc, verify)
    data_source_id: DataSourceId | None
    params: Mapping[str, Any]
    progress: Mapping[str, Any]
    result: Mapping[str, Any] | None
    error: str | None
    warnings: int
    created_at: float
    started_at: float | None
    ended_at: float | None
    updated_at: float
    trigger: JobTrigger = JobTrigger.MANUAL
    attempt: int = 1
    scheduled_for: float | None = None
    retryable: bool = False

    @property
    def is_final(self) -> bool:
        return self.state.is_final


JOB_COLUMNS: Final = (
    "id, kind, state, agent_id, data_source_id, params, progress, result, error, warnings,"
    " created_at, started_at, ended_at, updated_at, trigger, attempt, scheduled_for, retryable"
)


def job_from_row(r: sqlite3.Row) -> JobRow:
    return JobRow(
        id=JobId(r[0]),
        kind=JobKind(r[1]),
        state=JobState(r[2]),
        agent_id=None if r[3] is None else AgentId(r[3]),
        data_source_id=None if r[4] is None else DataSourceId(r[4]),
        params=json.loads(r[5]),
        progress=json.loads(r[6]),
        result=None if r[7] is None else json.loads(r[7]),
        error=r[8],
        warnings=r[9],
        created_at=r[10],
        started_at=r[11],
        ended_at=r[12],
        updated_at=r[13],
        trigger=JobTrigger(r[14]),
        attempt=r[15],
        scheduled_for=r[16],
        retryable=bool(r[17]),
    )


@dataclass(frozen=True, slots=True)
class RecoveryPointRow:
    id: RecoveryPointId
    data_source_id: DataSourceId
    agent_id: AgentId
    created_at: float
    job_id: JobId | None
    entries: int
    files: int
    logical_bytes: int
    labels: Mapping[str, str]


RECOVERY_POINT_COLUMNS: Final = (
    "r.id, r.data_source_id, d.agent_id, r.created_at, r.job_id, r.entries, r.files,"
    " r.logical_bytes, r.labels"
)
RECOVERY_POINT_FROM: Final = "recovery_points r JOIN data_sources d ON d.id = r.data_source_id"


def recovery_point_from_row(r: sqlite3.Row) -> RecoveryPointRow:
    return RecoveryPointRow(
        id=RecoveryPointId(r[0]),
        data_source_id=DataSourceId(r[1]),
        agent_id=AgentId(r[2]),
        created_at=r[3],
        job_id=None if r[4] is None else JobId(r[4]),
        entries=r[5],
        files=r[6],
        logical_bytes=r[7],
        labels=json.loads(r[8]),
    )


@dataclass(frozen=True, slots=True)
class RebuildReport:
    agents_created: int
    data_sources_created: int
    recovery_points_added: int
    recovery_points_skipped: int


# -- validation --


def check_name(what: str, name: str, *, forbid: str = "") -> str:
    """A display name: 1..255 characters, no control characters, none of `forbid`."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise CatalogValidationError(f"{what} name must be 1..{MAX_NAME} characters: {name!r:.80}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise CatalogValidationError(f"{what} name contains control characters: {name!r:.80}")
    bad = sorted({ch for ch in name if ch in forbid})
    if bad:
        raise CatalogValidationError(f"{what} name may not contain {''.join(bad)!r}: {name!r}")
    return name


def check_file_spec(paths: Sequence[str], excludes: Iterable[str]) -> dict[str, list[str]]:
    """Validate a "files" data source spec: absolute paths (at least one), no NUL bytes."""
    if isinstance(paths, str):
        raise CatalogValidationError(f"paths must be a list of paths, not one string: {paths!r}")
    path_list = list(paths)
    if not path_list:
        raise CatalogValidationError("a files data source needs at least one path")
    for p in path_list:
        if not isinstance(p, str) or not p.startswith("/") or "\0" in p:
            raise CatalogValidationError(f"data source path must be absolute, no NUL: {p!r:.200}")
    if isinstance(excludes, str):
        raise CatalogValidationError(f"excludes must be a list of globs: {excludes!r}")
    exclude_list = list(excludes)
    for glob in exclude_list:
        if not isinstance(glob, str) or not glob or "\0" in glob:
            raise CatalogValidationError(f"exclude must be a non-empty glob, no NUL: {glob!r:.200}")
    return {"paths": path_list, "excludes": exclude_list}


def to_json(value: Mapping[str, Any], what: str) -> str:
    """Canonical JSON of an object column; CatalogValidationError when it is no JSON object."""
    if not isinstance(value, Mapping):
        raise CatalogValidationError(f"{what} must be a JSON object, got {type(value).__name__}")
    try:
        return json.dumps(dict(value), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise CatalogValidationError(f"{what} is not JSON-serialisable: {err}") from err


# -- alerts --


class AlertSeverity(enum.StrEnum):
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class AlertRow:
    """One alert: open while `resolved_at` is None. At most one open alert per
    (kind, subject); opening it again updates it in place."""

    id: AlertId
    kind: str
    subject: str
    severity: AlertSeverity
    message: str
    details: Mapping[str, Any]
    opened_at: float
    updated_at: float
    resolved_at: float | None

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


ALERT_COLUMNS: Final = (
    "id, kind, subject, severity, message, details, opened_at, updated_at, resolved_at"
)


def alert_from_row(r: sqlite3.Row) -> AlertRow:
    return AlertRow(
        id=AlertId(r[0]),
        kind=r[1],
        subject=r[2],
        severity=AlertSeverity(r[3]),
        message=r[4],
        details=json.loads(r[5]),
        opened_at=r[6],
        updated_at=r[7],
        resolved_at=r[8],
    )
