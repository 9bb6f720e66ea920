"""Fixtures of the agent's tests: a real Mosquitto, a real TLS data plane over a real pool."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from agent.config import AgentIdentity
from storage_pool import PoolConfig, StoragePool
from storage_pool.chunker import ChunkerParams
from tests.integration.agent.fake_dataplane import FakeDataPlane, build_app, server_ssl
from tests.support.mqtt import free_port, require_binary

AGENT_ID = "agent1"
CREDENTIAL = "secret"
COMMAND_KEY = "5a" * 32
# Small chunks so small test trees still make several chunks per file.
SMALL_CHUNKS = ChunkerParams(min_size=1024, avg_size=4096, max_size=16384)


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(500):
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"mosquitto did not listen on {port}")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    """A plain Mosquitto on a free loopback port (anonymous): returns the port."""
    binary = require_binary("mosquitto")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "log_dest stderr\n"
        "max_queued_messages 100000\n"
        "user root\n"
    )
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_port(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[StoragePool]:
    p = await StoragePool.create(tmp_path / "pool", PoolConfig(chunker=SMALL_CHUNKS))
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA and server certificate for the whole run (key generation is not free)."""
    path = tmp_path_factory.mktemp("tls")
    server_ssl(path)
    return path


@pytest.fixture
async def dataplane(tls_dir: Path, pool: StoragePool) -> AsyncIterator[FakeDataPlane]:
    ctx, ca_pem = await asyncio.to_thread(server_ssl, tls_dir)
    port = free_port()
    dp = FakeDataPlane(pool=pool, port=port, ca_pem=ca_pem)
    runner = web.AppRunner(build_app(dp))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx)
    await site.start()
    try:
        yield dp
    finally:
        await runner.cleanup()


def make_identity(server_url: str, ca_pem: str, broker_port: int) -> AgentIdentity:
    return AgentIdentity(
        agent_id=AGENT_ID,
        credential=CREDENTIAL,
        server_url=server_url,
        mqtt_url=f"mqtt://127.0.0.1:{broker_port}",
        ca_pem=ca_pem,
        command_key=COMMAND_KEY,
    )
