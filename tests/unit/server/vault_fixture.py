"""Helpers of the vault registration tests: registries on a real folder vault with the
test-only KDF parameters, passed explicitly (the server itself uses production ones)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from server.vault_backends import open_backend
from server.vault_registry import VaultRegistry
from storage_pool.vault.backend import PutData, TransientError, VaultBackend
from storage_pool.vault.folder import FolderBackend
from storage_pool.vault.format import HEADER_NAME
from storage_pool.vault.keys import KDF_TESTING
from tests.unit.server.catalog_fixture import FakeClock

PASSPHRASE = "correct horse battery staple"
OTHER_PASSPHRASE = "another long enough passphrase"


def folder_spec(root: Path) -> dict[str, Any]:
    return {"kind": "folder", "path": str(root)}


def plain_opener(spec: Mapping[str, Any]) -> VaultBackend:
    return open_backend(spec, retry=None)


def registry(data_dir: Path, clock: FakeClock, opener: Any = plain_opener) -> VaultRegistry:
    data_dir.mkdir(parents=True, exist_ok=True)
    return VaultRegistry(
        data_dir, clock=clock, kdf_params=KDF_TESTING, min_params=KDF_TESTING, opener=opener
    )


class RacingFolder(FolderBackend):
    """A real folder backend whose first header read waits for the other racer's, so two
    registrations both see a vault without keys before either stores its header."""

    def __init__(self, root: Path, barrier: asyncio.Barrier) -> None:
        super().__init__(root)
        self._barrier: asyncio.Barrier | None = barrier

    async def get(self, name: str) -> bytes:
        try:
            return await super().get(name)
        finally:
            if name == HEADER_NAME and self._barrier is not None:
                barrier, self._barrier = self._barrier, None
                await barrier.wait()


class FailingHeaderPut(FolderBackend):
    """A real folder backend whose puts of the header fail as a lost connection would."""

    async def put(self, name: str, data: PutData, *, sha256: bytes | None = None) -> None:
        if name == HEADER_NAME:
            raise TransientError(self.description, name, "connection reset (injected)")
        await super().put(name, data, sha256=sha256)
