"""Vault backends for the contract suite: folder, a real Azurite and a real moto server.

Azurite and moto (fixtures of tests/integration/conftest.py) run once per module (in
memory, loopback, free ports); every test gets its own container or bucket so tests never
see each other's objects. `Target` builds a
backend of one kind, optionally through a `FaultProxy` in front of the service.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from storage_pool.vault.azure import AzureBackend
from storage_pool.vault.backend import VaultBackend
from storage_pool.vault.folder import FolderBackend
from storage_pool.vault.s3 import S3Backend
from tests.support.azurite import Azurite
from tests.support.fault_proxy import FaultProxy
from tests.support.moto import ACCESS_KEY, SECRET_KEY, Moto
from tests.unit.pool.pool_opener import PoolOpener, opened_pools

MiB = 1024 * 1024
KINDS = ["folder", "azure", "s3"]
NETWORK_KINDS = ["azure", "s3"]


@dataclass
class Target:
    """How to build a backend of one kind on one container, directly or through a proxy."""

    kind: str
    container: str
    make: Callable[[int | None], VaultBackend]
    upstream: tuple[str, int] | None

    def backend(self, *, via: FaultProxy | None = None) -> VaultBackend:
        return self.make(via.port if via is not None else None)


def _unique(kind: str) -> str:
    return f"t{uuid.uuid4().hex[:20]}"  # valid as an Azure container and an S3 bucket name


def make_target(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    container = _unique(kind)
    if kind == "folder":
        root = tmp_path / "vault"
        return Target(kind, container, lambda _port: FolderBackend(root), None)
    if kind == "azure":
        azurite: Azurite = request.getfixturevalue("azurite")

        def make_azure(port: int | None) -> VaultBackend:
            return AzureBackend(
                container,
                connection_string=azurite.connection_string(port=port),
                block_size=4 * MiB,
                max_concurrency=4,
            )

        return Target(kind, container, make_azure, (azurite.host, azurite.port))
    if kind == "s3":
        moto: Moto = request.getfixturevalue("moto")

        def make_s3(port: int | None) -> VaultBackend:
            endpoint = f"http://127.0.0.1:{port}" if port is not None else moto.endpoint_url
            return S3Backend(
                container,
                prefix="vault/",
                endpoint_url=endpoint,
                access_key_id=ACCESS_KEY,
                secret_access_key=SECRET_KEY,
                part_size=5 * MiB,
                max_concurrency=4,
            )

        return Target(kind, container, make_s3, (moto.host, moto.port))
    raise ValueError(kind)


@pytest.fixture(params=KINDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    return make_target(request.param, request, tmp_path)


@pytest.fixture(params=NETWORK_KINDS)
def network_target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    return make_target(request.param, request, tmp_path)


@pytest.fixture
async def backend(target: Target) -> AsyncIterator[VaultBackend]:
    async with target.backend() as vault:
        await vault.ensure_container()
        yield vault


@pytest.fixture
async def proxy(network_target: Target) -> AsyncIterator[FaultProxy]:
    assert network_target.upstream is not None
    fault_proxy = FaultProxy(*network_target.upstream)
    await fault_proxy.start()
    yield fault_proxy
    await fault_proxy.stop()


@pytest.fixture
async def pools(tmp_path: Path) -> AsyncIterator[PoolOpener]:
    async with opened_pools(tmp_path / "pools") as opener:
        yield opener
