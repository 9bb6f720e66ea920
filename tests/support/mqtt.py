"""Test helpers for MQTT: free ports, TLS clients of the managed broker, required binaries.

Non-delivery checks rely on Mosquitto's per-subscriber ordering: messages from one
publisher at one QoS reach a subscriber in publish order. A test publishes the forbidden
message first and an allowed "control" message second, then reads until the control one
arrives (:func:`messages_until`): anything the forbidden publish could have delivered would
have come before it. This proves delivery works and the forbidden message did not arrive,
without guessing how long to wait.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NoReturn
from urllib.parse import urlsplit

import aiomqtt
import pytest

from server.tls import client_ssl_context

__all__ = [
    "DEFAULT_TIMEOUT",
    "free_port",
    "make_client",
    "messages_until",
    "mqtt_client",
    "next_message",
    "require_binary",
    "unique_topic",
]

# Generous on purpose: only a broken test waits this long (2 shared cores).
DEFAULT_TIMEOUT = 10.0
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the kernel's pick; may race, rarely does)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def require_binary(name: str) -> str:
    """Path of the binary ``name`` (PATH, then /usr/sbin, /usr/local/sbin).

    Missing: the calling test is skipped, or fails when ``CI=true`` (CI must run it).
    """
    found = shutil.which(name)
    for directory in _SBIN_DIRS:
        if found is not None:
            break
        found = shutil.which(name, path=directory)
    if found is not None:
        return found
    message = f"required binary {name!r} is not installed (PATH, {', '.join(_SBIN_DIRS)})"
    if os.environ.get("CI", "").lower() == "true":
        _fail(f"{message}; CI=true, so this is a failure (install it, e.g. apt-get install)")
    pytest.skip(message)


def _fail(message: str) -> NoReturn:
    pytest.fail(message, pytrace=False)


def unique_topic(prefix: str = "test") -> str:
    """A topic level no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _host_port(url_or_host: str, port: int | None) -> tuple[str, int]:
    if "://" not in url_or_host:
        if port is None:
            raise ValueError(f"port required with a bare host {url_or_host!r}")
        return url_or_host, port
    parts = urlsplit(url_or_host)
    if parts.scheme != "mqtts" or parts.hostname is None or parts.port is None:
        raise ValueError(f"expected mqtts://host:port, got {url_or_host!r}")
    return parts.hostname, parts.port


def make_client(
    url_or_host: str,
    port: int | None = None,
    *,
    user: str,
    password: str,
    ca_pem: bytes,
    client_id: str | None = None,
    clean_session: bool | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> aiomqtt.Client:
    """An unconnected aiomqtt client (MQTT 3.1.1) for the broker at ``url_or_host``.

    TLS trusts only ``ca_pem`` and checks the host name. ``clean_session=False`` keeps a
    persistent session (the managed broker keys sessions by username anyway).
    """
    host, port = _host_port(url_or_host, port)
    return aiomqtt.Client(
        host,
        port,
        username=user,
        password=password,
        identifier=client_id if client_id is not None else unique_topic(user),
        clean_session=clean_session,
        protocol=aiomqtt.ProtocolVersion.V311,
        tls_context=client_ssl_context(ca_pem),
        timeout=timeout,
    )


@asynccontextmanager
async def mqtt_client(
    url_or_host: str,
    port: int | None = None,
    *,
    user: str,
    password: str,
    ca_pem: bytes,
    client_id: str | None = None,
    clean_session: bool | None = None,
    connect_timeout: float = DEFAULT_TIMEOUT,
) -> AsyncIterator[aiomqtt.Client]:
    """Connected client for ``async with mqtt_client(...) as client:``; see :func:`make_client`.

    A refused connection raises ``aiomqtt.MqttCodeError`` on entry.
    """
    client = make_client(
        url_or_host,
        port,
        user=user,
        password=password,
        ca_pem=ca_pem,
        client_id=client_id,
        clean_session=clean_session,
        timeout=connect_timeout,
    )
    async with client:
        yield client


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    """The next message ``client`` receives; TimeoutError after :data:`DEFAULT_TIMEOUT`."""
    async with asyncio.timeout(DEFAULT_TIMEOUT):
        return await anext(client.messages)


async def messages_until(client: aiomqtt.Client, control_topic: str) -> list[aiomqtt.Message]:
    """Messages received before the first one on ``control_topic`` (which is consumed).

    TimeoutError after :data:`DEFAULT_TIMEOUT` without the control message.
    """
    before: list[aiomqtt.Message] = []
    async with asyncio.timeout(DEFAULT_TIMEOUT):
        async for message in client.messages:
            if message.topic.matches(control_topic):
                return before
            before.append(message)
    raise AssertionError(f"message iterator ended before a message on {control_topic}")
