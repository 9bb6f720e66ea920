"""ManagedBroker's lifecycle on the real binary: reloads, crashes, restarts, start errors."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiomqtt
import pytest
import structlog
from structlog.testing import capture_logs
from structlog.types import EventDict

from server.broker import (
    SERVER_USER,
    BrokerNotInstalledError,
    BrokerPortInUseError,
    ManagedBroker,
    hash_password,
)
from server.tls import TlsMaterial
from tests.integration.broker.conftest import BrokerEnv, topic
from tests.support.mqtt import (
    DEFAULT_TIMEOUT,
    free_port,
    messages_until,
    next_message,
    require_binary,
)


async def test_removed_identity_is_dropped_and_refused(broker_env: BrokerEnv) -> None:
    broker = broker_env.broker
    async with broker_env.client("A") as agent:
        await agent.subscribe(topic("A", "cmd"), qos=1)
        await broker.remove_identity("A")
        # Mosquitto re-checks connected clients on reload and disconnects A.
        with pytest.raises(aiomqtt.MqttError):
            await next_message(agent)
    assert "A" not in broker.identities

    with pytest.raises(aiomqtt.MqttCodeError, match=r"[Nn]ot authori[sz]ed"):
        async with broker_env.client("A"):
            pass

    # B was not touched by the reload.
    async with broker_env.client("B"):
        pass

    # Re-added with a new password: only the new one works.
    await broker.add_identity("A", "alpha-new")
    async with broker_env.client("A", password="alpha-new"):
        pass
    with pytest.raises(aiomqtt.MqttCodeError):
        async with broker_env.client("A", password="alpha-secret"):
            pass


async def test_set_identities_replaces_everything(broker_env: BrokerEnv) -> None:
    broker = broker_env.broker
    await broker.set_identities({SERVER_USER: "server-secret", "C": "charlie"})
    assert broker.identities == {SERVER_USER, "C"}
    async with broker_env.client("C", password="charlie"), broker_env.client(SERVER_USER):
        pass
    for user in ("A", "B"):
        with pytest.raises(aiomqtt.MqttCodeError):
            async with broker_env.client(user):
                pass


@pytest.mark.parametrize("bad", ["#", "+", "a/b", "a:b", "", "x" * 65, "é"])
async def test_invalid_identity_names_are_rejected(broker_env: BrokerEnv, bad: str) -> None:
    with pytest.raises(ValueError, match="invalid broker identity"):
        await broker_env.broker.add_identity(bad, "pw")
    with pytest.raises(ValueError, match="invalid broker identity"):
        await broker_env.broker.set_identities({bad: "pw"})
    assert broker_env.broker.identities == {SERVER_USER, "A", "B"}


async def _wait_for_restart(broker: ManagedBroker, generation: int) -> None:
    async with asyncio.timeout(DEFAULT_TIMEOUT):
        await broker.wait_ready(after_generation=generation)


@pytest.mark.crash
async def test_kill_9_restarts_and_keeps_queued_qos1(broker_env: BrokerEnv) -> None:
    """A QoS 1 command queued for an offline persistent session survives kill -9."""
    broker = broker_env.broker
    async with broker_env.client("B", clean_session=False) as agent_b:
        await agent_b.subscribe(topic("B", "cmd"), qos=1)

    async with broker_env.client(SERVER_USER) as server:
        await server.publish(topic("B", "cmd"), b"queued-while-offline", qos=1)
        # Mosquitto saves its database right after the PUBACK; a later round trip makes
        # sure that save is done before the kill (server/broker.py, "Persistence").
        await server.publish(topic("B", "fence"), b"", qos=1)

        old_pid, generation = broker.pid, broker.generation
        assert old_pid is not None
        with capture_logs() as logs:
            os.kill(old_pid, signal.SIGKILL)
            await _wait_for_restart(broker, generation)
        events = [entry["event"] for entry in logs]
        assert "broker_died" in events
        assert "broker_restarted" in events
        died = next(entry for entry in logs if entry["event"] == "broker_died")
        assert died["returncode"] == -signal.SIGKILL
        assert broker.pid not in (None, old_pid)

        # The old connection is gone; new ones work.
        with pytest.raises(aiomqtt.MqttError):
            await server.publish(topic("A", "cmd"), b"", qos=1)

    async with broker_env.client("B", clean_session=False) as agent_b:
        message = await next_message(agent_b)
        assert (message.topic.value, message.payload) == (
            topic("B", "cmd"),
            b"queued-while-offline",
        )
    async with broker_env.client(SERVER_USER) as server, broker_env.client("A") as agent_a:
        await agent_a.subscribe(topic("A", "cmd"), qos=1)
        await server.publish(topic("A", "cmd"), b"after-restart", qos=1)
        assert (await next_message(agent_a)).payload == b"after-restart"


@contextmanager
def signal_on_log_event(name: str) -> Iterator[asyncio.Event]:
    """An asyncio.Event set when a structlog event called ``name`` is logged."""
    seen = asyncio.Event()
    old = structlog.get_config()

    def hook(_logger: object, _method: str, event_dict: EventDict) -> EventDict:
        if event_dict.get("event") == name:
            seen.set()
        raise structlog.DropEvent

    structlog.configure(processors=[hook])
    try:
        yield seen
    finally:
        structlog.configure(**old)


@pytest.mark.crash
async def test_supervisor_retries_until_the_port_is_free_again(broker_env: BrokerEnv) -> None:
    """The restart fails while another process holds the port; the supervisor keeps
    trying (with back-off) and the broker comes back once the port is free."""
    broker = broker_env.broker
    pid, generation = broker.pid, broker.generation
    assert pid is not None
    with signal_on_log_event("broker_restart_failed") as restart_failed:
        holder = socket.socket()
        try:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            os.kill(pid, signal.SIGKILL)
            # The dying broker's listener may linger for a moment; the supervisor waits
            # 0.5 s before its first restart, far longer than this takes.
            async with asyncio.timeout(DEFAULT_TIMEOUT):
                while True:
                    try:
                        holder.bind(("127.0.0.1", broker.port))
                        break
                    except OSError:
                        await asyncio.sleep(0.01)
            holder.listen()
            async with asyncio.timeout(DEFAULT_TIMEOUT):
                await restart_failed.wait()
        finally:
            holder.close()
        await _wait_for_restart(broker, generation)
    async with broker_env.client("A"):
        pass


async def test_identities_changed_while_broker_is_down_apply_after_restart(
    broker_env: BrokerEnv,
) -> None:
    broker = broker_env.broker
    pid, generation = broker.pid, broker.generation
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await broker.remove_identity("A")
    await _wait_for_restart(broker, generation)
    with pytest.raises(aiomqtt.MqttCodeError):
        async with broker_env.client("A"):
            pass
    async with broker_env.client("B"):
        pass


async def test_sigterm_restart_keeps_acl_and_queue(
    tmp_path: Path, tls: TlsMaterial, mosquitto_binary: str
) -> None:
    """stop() then start() on the same directory: same identities, queued message kept."""
    passwords = {SERVER_USER: "s", "A": "a"}
    env = BrokerEnv(
        broker=ManagedBroker(
            tmp_path / "broker", tls, "127.0.0.1", free_port(), mosquitto=mosquitto_binary
        ),
        tls=tls,
        passwords=passwords,
    )
    await env.broker.set_identities(passwords)
    async with env.broker:
        async with env.client("A", clean_session=False) as agent:
            await agent.subscribe(topic("A", "cmd"), qos=1)
        async with env.client(SERVER_USER) as server:
            await server.publish(topic("A", "cmd"), b"kept", qos=1)
    async with env.broker, env.client("A", clean_session=False) as agent:
        assert (await next_message(agent)).payload == b"kept"
        await agent.subscribe("#", qos=1)
        async with env.client(SERVER_USER) as server:
            await server.publish(topic("B", "cmd"), b"not-for-A", qos=1)
            await server.publish(topic("A", "cmd"), b"control", qos=1)
        assert await messages_until(agent, topic("A", "cmd")) == []


async def test_port_in_use_is_a_clear_error(
    tmp_path: Path, tls: TlsMaterial, mosquitto_binary: str
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        broker = ManagedBroker(
            tmp_path / "broker", tls, "127.0.0.1", port, mosquitto=mosquitto_binary
        )
        with pytest.raises(BrokerPortInUseError, match=f"port {port} on 127.0.0.1"):
            await broker.start()
    assert broker.pid is None
    await broker.stop()


async def test_missing_binary_names_it_and_how_to_install(tmp_path: Path, tls: TlsMaterial) -> None:
    broker = ManagedBroker(
        tmp_path / "broker", tls, "127.0.0.1", free_port(), mosquitto="mosquitto-not-here"
    )
    with pytest.raises(BrokerNotInstalledError, match="mosquitto-not-here") as caught:
        await broker.start()
    assert "apt-get install mosquitto" in str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)


def test_password_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    """Our `$7$` lines are byte-identical to mosquitto_passwd's for the same salt."""
    binary = require_binary("mosquitto_passwd")
    passwd = tmp_path / "passwd"
    password = "pässword with spaces:and:colons"
    subprocess.run([binary, "-c", "-b", str(passwd), "someone", password], check=True)
    user, line = passwd.read_text(encoding="utf-8").strip().split(":", 1)
    _, kind, iterations, salt_b64, _ = line.split("$")
    assert (user, kind) == ("someone", "7")
    salt = base64.b64decode(salt_b64)
    assert hash_password(password, iterations=int(iterations), salt=salt) == line
