"""The catalog's SQL schema as numbered migrations.

`MIGRATIONS[i]` takes a catalog from version ``i`` to ``i + 1``; the version lives in
``PRAGMA user_version``. Each migration runs in its own transaction together with the
user_version bump (catalog_base.migrate), so a crash leaves the catalog at the old or the
new version, never in between. Migrations are append-only: never edit a released one, add
the next. A catalog whose user_version is higher than ``len(MIGRATIONS)`` was written by a
newer Stockade and is refused. ``PRAGMA application_id`` marks the file as a Stockade
catalog, so another program's SQLite database is not mistaken for one.

Columns (times are float unix seconds from the catalog's clock; JSON columns hold objects):

* agent_tokens: only the SHA-256 of a registration token is stored. A token is redeemed
  once, by an UPDATE that matches only while it is unused and unexpired.
* agents: `credential_hash` is the SHA-256 hex of the agent's secret; NULL for an agent
  rebuilt from the pool, which must register again (`needs_registration`). Names are
  unique among agents not removed.
* data_sources: `spec` is ``{"paths": [...], "excludes": [...]}``; names are unique per
  agent among data sources not removed.
* jobs: at most one queued or running backup per data source (partial unique index).
* recovery_points: rows of the pool's committed RPs. `job_id` is no foreign key because
  finished jobs are pruned while their RPs stay.

Version 2 adds:

* protection_groups: `disk_policy` and `online_policy` are JSON of server/policy.py's
  dataclasses; names are unique among groups not removed. A data source belongs to at most
  one group (`data_sources.protection_group_id`); `protected_at` is when it joined, which
  is where its schedule starts.
* schedule_state: per data source, the last schedule slot a job was created for, so a
  restart neither repeats a slot nor runs every slot it missed.
* jobs: `agent_id` is NULL for server jobs (prune, gc); `trigger` says why the job exists,
  `attempt` counts retries, `scheduled_for` is the slot a scheduled job serves, and
  `retryable` marks a failure as transient.
* alerts: at most one open alert per (kind, subject); resolving sets `resolved_at`.
* security_pins: only the SHA-256 of a PIN; a PIN is used once, before `expires_at`.
* online_recovery_points: the online copies of disk RPs (filled by the cloud tier); the
  disk retention rule reads them.
* server_state: small key/value facts (last maintenance run).

Version 3 adds to online_recovery_points (id = the vault manifest's object name) its
logical bytes, the job that made it and its vault sequence number, and
online_schedule_state: per data source, the last online-backup slot served.
"""

from __future__ import annotations

from typing import Final

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION"]

APPLICATION_ID: Final = 0x53544B44  # "STKD"

_V1: Final = f"""
PRAGMA application_id = {APPLICATION_ID};

CREATE TABLE agent_tokens (
    token_hash TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL,
    agent_id TEXT
) STRICT;

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hostname TEXT NOT NULL,
    credential_hash TEXT,
    command_key TEXT,
    created_at REAL NOT NULL,
    last_seen_at REAL,
    online INTEGER NOT NULL DEFAULT 0 CHECK (online IN (0, 1)),
    state_changed_at REAL,
    version TEXT,
    last_backup_at REAL,
    removed_at REAL
) STRICT;
CREATE UNIQUE INDEX agents_live_name ON agents (name) WHERE removed_at IS NULL;

CREATE TABLE data_sources (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents (id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('files')),
    spec TEXT NOT NULL,
    created_at REAL NOT NULL,
    removed_at REAL
) STRICT;
CREATE UNIQUE INDEX data_sources_live_name ON data_sources (agent_id, name)
    WHERE removed_at IS NULL;

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('backup', 'restore')),
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded',
        'succeeded_with_warnings', 'failed', 'cancelled')),
    agent_id TEXT NOT NULL REFERENCES agents (id),
    data_source_id TEXT REFERENCES data_sources (id),
    params TEXT NOT NULL,
    progress TEXT NOT NULL,
    result TEXT,
    error TEXT,
    warnings INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    updated_at REAL NOT NULL
) STRICT;
CREATE INDEX jobs_created ON jobs (created_at);
CREATE INDEX jobs_agent ON jobs (agent_id, created_at);
CREATE INDEX jobs_data_source ON jobs (data_source_id, created_at);
CREATE UNIQUE INDEX jobs_one_active_backup ON jobs (data_source_id)
    WHERE kind = 'backup' AND state IN ('queued', 'running');

CREATE TABLE recovery_points (
    id TEXT PRIMARY KEY,
    data_source_id TEXT NOT NULL REFERENCES data_sources (id),
    created_at REAL NOT NULL,
    job_id TEXT,
    entries INTEGER NOT NULL,
    files INTEGER NOT NULL,
    logical_bytes INTEGER NOT NULL,
    labels TEXT NOT NULL
) STRICT;
CREATE INDEX recovery_points_data_source ON recovery_points (data_source_id, created_at);
"""

# Version 2: protection groups, schedules, alerts, security PINs, online RP rows for the
# retention rule, and jobs without an agent (prune, gc) plus their trigger and attempt.
# SQLite cannot change a CHECK or NOT NULL in place, so `jobs` is rebuilt and refilled.
_V2: Final = """
CREATE TABLE protection_groups (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    disk_policy TEXT NOT NULL,
    online_policy TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    removed_at REAL
) STRICT;
CREATE UNIQUE INDEX protection_groups_live_name ON protection_groups (name)
    WHERE removed_at IS NULL;

ALTER TABLE data_sources ADD COLUMN protection_group_id TEXT REFERENCES protection_groups (id);
ALTER TABLE data_sources ADD COLUMN protected_at REAL;
CREATE INDEX data_sources_group ON data_sources (protection_group_id);

CREATE TABLE schedule_state (
    data_source_id TEXT PRIMARY KEY REFERENCES data_sources (id),
    last_slot REAL NOT NULL,
    last_job_id TEXT
) STRICT;

CREATE TABLE jobs_v2 (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('backup', 'restore', 'online_backup', 'prune', 'gc',
        'verify')),
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded',
        'succeeded_with_warnings', 'failed', 'cancelled')),
    agent_id TEXT REFERENCES agents (id),
    data_source_id TEXT REFERENCES data_sources (id),
    params TEXT NOT NULL,
    progress TEXT NOT NULL,
    result TEXT,
    error TEXT,
    warnings INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    updated_at REAL NOT NULL,
    trigger TEXT NOT NULL DEFAULT 'manual' CHECK (trigger IN ('manual', 'schedule', 'missed',
        'retry', 'maintenance')),
    attempt INTEGER NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    scheduled_for REAL,
    retryable INTEGER NOT NULL DEFAULT 0 CHECK (retryable IN (0, 1))
) STRICT;
INSERT INTO jobs_v2 (id, kind, state, agent_id, data_source_id, params, progress, result,
    error, warnings, created_at, started_at, ended_at, updated_at)
    SELECT id, kind, state, agent_id, data_source_id, params, progress, result, error,
        warnings, created_at, started_at, ended_at, updated_at FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_v2 RENAME TO jobs;
CREATE INDEX jobs_created ON jobs (created_at);
CREATE INDEX jobs_agent ON jobs (agent_id, created_at);
CREATE INDEX jobs_data_source ON jobs (data_source_id, created_at);
CREATE INDEX jobs_ended ON jobs (ended_at);
CREATE UNIQUE INDEX jobs_one_active_backup ON jobs (data_source_id)
    WHERE kind = 'backup' AND state IN ('queued', 'running');

CREATE TABLE alerts (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    severity TEXT NOT NULL CHECK (severity IN ('warning', 'error', 'critical')),
    message TEXT NOT NULL,
    details TEXT NOT NULL,
    opened_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    resolved_at REAL
) STRICT;
CREATE UNIQUE INDEX alerts_open ON alerts (kind, subject) WHERE resolved_at IS NULL;
CREATE INDEX alerts_opened ON alerts (opened_at);

CREATE TABLE security_pins (
    pin_hash TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL,
    used_for TEXT
) STRICT;

CREATE TABLE online_recovery_points (
    id TEXT PRIMARY KEY,
    data_source_id TEXT NOT NULL REFERENCES data_sources (id),
    disk_rp_id TEXT,
    source_created_at REAL NOT NULL,
    created_at REAL NOT NULL,
    deleted_at REAL
) STRICT;
CREATE INDEX online_recovery_points_data_source
    ON online_recovery_points (data_source_id, source_created_at);

CREATE TABLE server_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
"""

# Version 3: what the cloud tier records of online RPs, and the online schedule.
_V3: Final = """
ALTER TABLE online_recovery_points ADD COLUMN logical_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE online_recovery_points ADD COLUMN job_id TEXT;
ALTER TABLE online_recovery_points ADD COLUMN sequence INTEGER;
CREATE INDEX online_recovery_points_disk_rp ON online_recovery_points (disk_rp_id);

CREATE TABLE online_schedule_state (
    data_source_id TEXT PRIMARY KEY REFERENCES data_sources (id),
    last_slot REAL NOT NULL
) STRICT;
"""

MIGRATIONS: Final[list[str]] = [_V1, _V2, _V3]
SCHEMA_VERSION: Final = len(MIGRATIONS)
