"""Helpers of the connection-monitor tests: a registered vault (any backend spec), a real
catalog and a `CloudHealth` over them, and a fault injector that wraps a real backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from server.alerts import CLOUD_CONNECTION, AlertCenter
from server.catalog import Catalog
from server.catalog_rows import AlertRow
from server.cloud_health import CloudHealth
from server.cloud_status import CloudStatus
from server.config import ServerConfig, load_server_config
from server.ids import DataSourceId
from server.vault_backends import open_backend
from server.vault_credentials import VaultCredentials
from server.vault_registry import INIT_MARKER_NAME, BackendOpener, VaultRegistry
from storage_pool.vault.backend import (
    ObjectInfo,
    PutData,
    VaultBackend,
)
from tests.unit.server.catalog_fixture import FakeClock, opened
from tests.unit.server.cloud_fixture import agent_and_source
from tests.unit.server.vault_fixture import PASSPHRASE, registry


def health_config(data_dir: Path, rejections: int = 2) -> ServerConfig:
    return load_server_config(
        None,
        overrides={
            "server.data_dir": str(data_dir),
            "cloud.rejections_to_change_state": str(rejections),
        },
    )


@dataclass
class Faults:
    """What the wrapped backends raise now (None: pass every call through)."""

    error: Exception | None = None
    calls: int = 0


class Faulty(VaultBackend):
    """A real backend that raises `faults.error` instead of calling the service."""

    def __init__(self, inner: VaultBackend, faults: Faults) -> None:
        self.inner = inner
        self.faults = faults

    @property
    def description(self) -> str:
        return self.inner.description

    def _check(self) -> None:
        self.faults.calls += 1
        if self.faults.error is not None:
            raise self.faults.error

    async def put(self, name: str, data: PutData, *, sha256: bytes | None = None) -> None:
        self._check()
        await self.inner.put(name, data, sha256=sha256)

    async def get(self, name: str) -> bytes:
        self._check()
        return await self.inner.get(name)

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        self._check()
        return await self.inner.get_range(name, offset, length)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        self._check()
        async for info in self.inner.list(prefix):
            yield info

    async def head(self, name: str) -> int | None:
        self._check()
        return await self.inner.head(name)

    async def delete(self, name: str) -> None:
        self._check()
        await self.inner.delete(name)

    async def create_if_absent(self, name: str, data: bytes) -> bool:
        self._check()
        return await self.inner.create_if_absent(name, data)

    async def ensure_container(self) -> None:
        self._check()
        await self.inner.ensure_container()

    async def container_exists(self) -> bool:
        self._check()
        return await self.inner.container_exists()

    async def abort_stale_uploads(self, older_than: timedelta) -> int:
        self._check()
        return await self.inner.abort_stale_uploads(older_than)

    async def close(self) -> None:
        await self.inner.close()


def faulty_opener(faults: Faults) -> BackendOpener:
    def open_faulty(spec: Mapping[str, Any]) -> VaultBackend:
        return Faulty(open_backend(spec, retry=None), faults)

    return open_faulty


@dataclass
class Monitored:
    data_dir: Path
    catalog: Catalog
    registry: VaultRegistry
    health: CloudHealth
    alerts: AlertCenter
    clock: FakeClock
    faults: Faults
    changes: list[tuple[CloudStatus, CloudStatus]] = field(default_factory=list)

    async def open_alert(self) -> AlertRow | None:
        rows = await self.catalog.open_alerts_of_kind(CLOUD_CONNECTION)
        assert len(rows) <= 1
        return rows[0] if rows else None

    async def add_online_rps(self, count: int) -> list[str]:
        _, ds = await agent_and_source(self.catalog, f"host{count}")
        ids = []
        for i in range(count):
            row = await self.catalog.add_online_rp(
                f"data/00/{i:064x}",
                DataSourceId(ds.id),
                disk_rp_id=None,
                source_created_at=self.clock.now - 100 + i,
                created_at=self.clock.now,
                logical_bytes=10,
            )
            ids.append(row.id)
        return ids


async def prepare_location(spec: Mapping[str, Any]) -> None:
    """What New-Vault leaves at a place: the container and the marker."""
    async with open_backend(spec, retry=None) as backend:
        await backend.ensure_container()
        marker = b'{"created_at": 0, "format": "stockade-vault-init", "format_version": 1}\n'
        await backend.create_if_absent(INIT_MARKER_NAME, marker)


async def register_spec(reg: VaultRegistry, spec: Mapping[str, Any], now: float) -> None:
    """Register-Vault with credentials for `spec` (the location must be prepared)."""
    credentials = VaultCredentials.issue(dict(spec), None, now)
    await reg.register(credentials.to_doc(), PASSPHRASE)


@asynccontextmanager
async def monitored(
    base: Path,
    clock: FakeClock,
    *,
    rejections: int = 2,
    name: str = "server",
) -> AsyncIterator[Monitored]:
    """A catalog, a registry (not yet registered) and a loaded monitor whose probes pass
    through `faults`; the registry's own backends are observed by the monitor."""
    data_dir = base / name
    faults = Faults()
    config = health_config(data_dir, rejections)
    async with opened(base / f"{name}-catalog.sqlite", clock) as catalog:
        reg = registry(data_dir, clock)
        alerts = AlertCenter(catalog, lambda: "")
        health = CloudHealth(
            catalog, reg, lambda: config, clock, alerts, probe_opener=faulty_opener(faults)
        )
        reg.use_opener(health.opener(retry=None))
        m = Monitored(data_dir, catalog, reg, health, alerts, clock, faults)

        async def record(old: CloudStatus, new: CloudStatus) -> None:
            m.changes.append((old, new))

        health.subscribe(record)
        await health.load()
        try:
            yield m
        finally:
            await health.close()
            await alerts.close()
