"""Helpers of the online-backup tests: a folder vault with test-only KDF parameters, a
backend wrapper that counts (and can fail) puts, and deterministic trees to back up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

from storage_pool.vault.backend import ObjectInfo, PutData, TransientError, VaultBackend
from storage_pool.vault.folder import FolderBackend
from storage_pool.vault.keys import KDF_TESTING
from storage_pool.vault.vault import Vault
from tests.unit.pool.sample_data import random_bytes, text_bytes

PASSPHRASE = "correct horse battery staple 42"
MARKER = b"PLAINTEXT-MARKER-7f3a9c"
KiB = 1024
MiB = 1024 * KiB


class DelegatingBackend(VaultBackend):
    """A real backend behind a wrapper: every call goes to `inner`; subclasses override the
    calls they count or fail."""

    def __init__(self, inner: VaultBackend) -> None:
        self.inner = inner

    @property
    def description(self) -> str:
        return self.inner.description

    async def put(self, name: str, data: PutData, *, sha256: bytes | None = None) -> None:
        await self.inner.put(name, data, sha256=sha256)

    async def get(self, name: str) -> bytes:
        return await self.inner.get(name)

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        return await self.inner.get_range(name, offset, length)

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        return self.inner.list(prefix)

    async def head(self, name: str) -> int | None:
        return await self.inner.head(name)

    async def delete(self, name: str) -> None:
        await self.inner.delete(name)

    async def create_if_absent(self, name: str, data: bytes) -> bool:
        return await self.inner.create_if_absent(name, data)

    async def ensure_container(self) -> None:
        await self.inner.ensure_container()

    async def container_exists(self) -> bool:
        return await self.inner.container_exists()

    async def abort_stale_uploads(self, older_than: timedelta) -> int:
        return await self.inner.abort_stale_uploads(older_than)

    async def close(self) -> None:
        await self.inner.close()


class CountingBackend(DelegatingBackend):
    """A real backend with its puts counted by name; `fail_after` puts, it raises."""

    def __init__(self, inner: VaultBackend, *, fail_after: int | None = None) -> None:
        super().__init__(inner)
        self.fail_after = fail_after
        self.puts: list[tuple[str, int]] = []
        self.on_put: Callable[[], None] = lambda: None

    @property
    def description(self) -> str:
        return f"counting {self.inner.description}"

    async def put(self, name: str, data: PutData, *, sha256: bytes | None = None) -> None:
        if self.fail_after is not None and len(self.puts) >= self.fail_after:
            raise TransientError(self.description, name, "injected outage", kind="connect")
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        self.on_put()
        await self.inner.put(name, data, sha256=sha256)
        self.puts.append((name, size))


async def create_folder_vault(root: Path, cache_dir: Path | None = None) -> Vault:
    return await Vault.create(
        FolderBackend(root),
        PASSPHRASE,
        cache_dir=cache_dir,
        params=KDF_TESTING,
        min_params=KDF_TESTING,
    )


async def open_vault(
    backend: VaultBackend, cache_dir: Path | None, passphrase: str = PASSPHRASE
) -> Vault:
    return await Vault.open(backend, passphrase, cache_dir=cache_dir, min_params=KDF_TESTING)


def tree(seed: int, *, files: int = 6, size: int = 300 * KiB) -> dict[bytes, bytes]:
    """Files of random and text data, each starting with the plaintext marker."""
    out = {}
    for i in range(files):
        body = random_bytes(size, seed * 100 + i) if i % 2 else text_bytes(size, seed * 100 + i)
        out[f"dir{i % 2}/file{i}.bin".encode()] = MARKER + body
    return out


def vault_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]
