"""Fixtures of the integration tests: a real Azurite and a real moto server, each started
once per module (in memory, loopback, free ports) for the tests that ask for it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.support.azurite import Azurite
from tests.support.moto import Moto


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    service = Azurite()
    asyncio.run(service.start())
    yield service
    asyncio.run(service.stop())
    service.close_log()


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    service = Moto()
    asyncio.run(service.start())
    yield service
    asyncio.run(service.stop())
    service.close_log()
