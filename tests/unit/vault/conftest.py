"""Fixtures of the vault format tests: keys made without Argon2id (fast), and a
test-only header made with `KDF_TESTING`, which only opens where a test says so; pools
under the test's directory, closed and deleted at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage_pool.vault.crypto import ObjectCipher
from storage_pool.vault.keys import VaultKeys
from storage_pool.vault.names import ObjectNamer
from tests.unit.pool.pool_opener import PoolOpener, opened_pools


@pytest.fixture
def keys() -> VaultKeys:
    return VaultKeys.generate(b"\x01" * 16)


@pytest.fixture
def cipher(keys: VaultKeys) -> ObjectCipher:
    return ObjectCipher(keys)


@pytest.fixture
def namer(keys: VaultKeys) -> ObjectNamer:
    return ObjectNamer(keys)


@pytest.fixture
async def pools(tmp_path: Path) -> AsyncIterator[PoolOpener]:
    async with opened_pools(tmp_path) as opener:
        yield opener
