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

MIGRATIONS: Final[list[str]] = [_V1]
SCHEMA_VERSION: Final = len(MIGRATIONS)
