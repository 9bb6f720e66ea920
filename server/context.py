"""What the server's parts share at run time, handed to aiohttp handlers via an AppKey."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from server.catalog import Catalog
from server.config import ServerConfig
from storage_pool import StoragePool

if TYPE_CHECKING:
    from server.alerts import AlertCenter
    from server.cloud_gate import CloudGate
    from server.cloud_health import CloudHealth
    from server.jobs import JobManager
    from server.online_backup import OnlineBackupRunner


@dataclass(slots=True)
class ServerContext:
    config: ServerConfig
    catalog: Catalog
    pool: StoragePool
    operator_token: str
    ca_pem: bytes
    mqtt_url: str
    server_url: str
    jobs: JobManager | None = None
    alerts: AlertCenter | None = None
    clock: Callable[[], float] = time.time
    # Broker identities of agents (managed broker only): add on registration, drop on removal.
    register_identity: Callable[[str, str], Awaitable[None]] | None = field(default=None)
    remove_identity: Callable[[str], Awaitable[None]] | None = field(default=None)
    # An agent's broker password (derived from a server secret, see daemon.mqtt_password).
    mqtt_password: Callable[[str], str] | None = field(default=None)
    # Online backup jobs (server/online_backup.py); None until the daemon starts them.
    online: OnlineBackupRunner | None = field(default=None)
    # The vault connectivity monitor (server/cloud_health.py) and the policy gate every job
    # start asks (server/cloud_gate.py); None until the daemon starts them.
    cloud: CloudHealth | None = field(default=None)
    cloud_gate: CloudGate | None = field(default=None)

    def job_manager(self) -> JobManager:
        if self.jobs is None:
            raise RuntimeError("job manager not started")
        return self.jobs


CTX_KEY = web.AppKey("stockade_ctx", ServerContext)
