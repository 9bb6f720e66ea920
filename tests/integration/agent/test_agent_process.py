"""The agent daemon as a process: readiness, last will on kill -9, clean SIGTERM, exit 78."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiomqtt
import pytest

from agent import protocol
from agent.config import save_identity
from tests.integration.agent.conftest import AGENT_ID, make_identity
from tests.support.mqtt import DEFAULT_TIMEOUT

REPO = Path(__file__).resolve().parents[3]
STATE_TOPIC = protocol.topic(AGENT_ID, "state")


@contextmanager
def agent_process(
    state_dir: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.daemon", "run", "--state-dir", str(state_dir)],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=DEFAULT_TIMEOUT)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def registered(tmp_path: Path, broker: int) -> Path:
    state = tmp_path / "state"
    save_identity(state / "identity.json", make_identity("https://127.0.0.1:9", "", broker))
    return state


async def next_state(watcher: aiomqtt.Client) -> dict[str, object]:
    async with asyncio.timeout(DEFAULT_TIMEOUT):
        message = await anext(watcher.messages)
    assert isinstance(message.payload, bytes)
    return dict(protocol.decode_message(message.payload).body)


async def test_last_will_offline_when_killed(broker: int, tmp_path: Path) -> None:
    state = registered(tmp_path, broker)
    async with aiomqtt.Client("127.0.0.1", broker, timeout=DEFAULT_TIMEOUT) as watcher:
        await watcher.subscribe(STATE_TOPIC, qos=1)
        with agent_process(state) as proc:
            assert (await next_state(watcher))["state"] == "online"
            proc.send_signal(signal.SIGKILL)
            assert (await next_state(watcher))["state"] == "offline"
            assert proc.wait(timeout=DEFAULT_TIMEOUT) == -signal.SIGKILL


async def test_sigterm_publishes_offline_and_exits_0(broker: int, tmp_path: Path) -> None:
    state = registered(tmp_path, broker)
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.setblocking(False)
        loop = asyncio.get_running_loop()
        async with aiomqtt.Client("127.0.0.1", broker, timeout=DEFAULT_TIMEOUT) as watcher:
            await watcher.subscribe(STATE_TOPIC, qos=1)
            with agent_process(state, {"NOTIFY_SOCKET": str(notify_path)}) as proc:
                assert (await next_state(watcher))["state"] == "online"
                async with asyncio.timeout(DEFAULT_TIMEOUT):
                    ready = await loop.sock_recv(notify, 4096)
                assert b"READY=1" in ready
                assert b"connected to the broker" in ready
                proc.send_signal(signal.SIGTERM)
                assert (await next_state(watcher))["state"] == "offline"
                assert await asyncio.to_thread(proc.wait, DEFAULT_TIMEOUT) == 0
                async with asyncio.timeout(DEFAULT_TIMEOUT):
                    stopping = await loop.sock_recv(notify, 4096)
                assert b"STOPPING=1" in stopping


@pytest.mark.parametrize("setup", ["missing", "group_readable"])
def test_bad_identity_exits_78(broker: int, tmp_path: Path, setup: str) -> None:
    state = tmp_path / "state"
    if setup == "group_readable":
        state = registered(tmp_path, broker)
        (state / "identity.json").chmod(0o640)
    result = subprocess.run(
        [sys.executable, "-m", "agent.daemon", "run", "--state-dir", str(state)],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 78
    assert b"identity.json" in result.stderr
