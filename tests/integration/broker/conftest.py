"""Fixtures: a real Mosquitto managed by :class:`ManagedBroker`, on its own port and dir."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest

from server.broker import SERVER_USER, TOPIC_ROOT, ManagedBroker
from server.tls import TlsMaterial, load_or_create_tls
from tests.support.mqtt import free_port, mqtt_client, require_binary


def topic(agent: str, leaf: str) -> str:
    return f"{TOPIC_ROOT}/{agent}/{leaf}"


@dataclass
class BrokerEnv:
    """A started broker with identities ``stockade-server``, ``A`` and ``B``."""

    broker: ManagedBroker
    tls: TlsMaterial
    passwords: dict[str, str] = field(default_factory=dict)

    def client(
        self,
        user: str,
        *,
        password: str | None = None,
        client_id: str | None = None,
        clean_session: bool | None = None,
    ) -> AbstractAsyncContextManager[aiomqtt.Client]:
        """Connected client as ``user`` (its known password unless ``password`` is given).

        The client id defaults to the username, as real agents and the server use, so a
        test borrowing another identity's client id really collides with it.
        """
        return mqtt_client(
            self.broker.url,
            user=user,
            password=self.passwords.get(user, "unknown") if password is None else password,
            ca_pem=self.tls.ca_pem,
            client_id=user if client_id is None else client_id,
            clean_session=clean_session,
        )


@pytest.fixture
def mosquitto_binary() -> str:
    return require_binary("mosquitto")


@pytest.fixture
async def tls(tmp_path: Path) -> TlsMaterial:
    return await asyncio.to_thread(load_or_create_tls, tmp_path / "tls", hostnames=())


@pytest.fixture
async def broker_env(
    tmp_path: Path, tls: TlsMaterial, mosquitto_binary: str
) -> AsyncIterator[BrokerEnv]:
    passwords = {SERVER_USER: "server-secret", "A": "alpha-secret", "B": "bravo-secret"}
    broker = ManagedBroker(
        tmp_path / "broker", tls, "127.0.0.1", free_port(), mosquitto=mosquitto_binary
    )
    await broker.set_identities(passwords)
    await broker.start()
    try:
        yield BrokerEnv(broker=broker, tls=tls, passwords=dict(passwords))
    finally:
        await broker.stop()
