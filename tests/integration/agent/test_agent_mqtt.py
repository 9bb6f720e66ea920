"""The agent over a real Mosquitto: signed commands run once, others are dropped.

The "server" here is a plain aiomqtt client that signs commands with the agent's command
key and watches the agent's events; the data plane is the fake one over a real pool, so
accepted backups and restores really run.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt

from agent import protocol
from agent.http_client import RetryPolicy
from agent.service import AgentService
from storage_pool import StoragePool
from tests.integration.agent.conftest import AGENT_ID, COMMAND_KEY, make_identity
from tests.integration.agent.fake_dataplane import FakeDataPlane, Restore
from tests.support.mqtt import DEFAULT_TIMEOUT, unique_topic

KEY = bytes.fromhex(COMMAND_KEY)
CMD_TOPIC = protocol.topic(AGENT_ID, "cmd")
EVENTS_TOPIC = protocol.topic(AGENT_ID, "events")
STATE_TOPIC = protocol.topic(AGENT_ID, "state")
FAST = RetryPolicy(budget=5.0, first=0.01, cap=0.05)


def command(
    kind: str,
    job_id: str,
    body: dict[str, Any],
    *,
    key: bytes | None = KEY,
    agent_id: str = AGENT_ID,
    expires_in: float = 600.0,
) -> bytes:
    now = time.time()
    msg = protocol.Message(
        kind, agent_id, body, job_id=job_id, issued_at=now, expires_at=now + expires_in
    )
    if key is not None:
        msg = msg.signed(key)
    return protocol.encode_message(msg)


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"hello\n",
        "sub/b.bin": os.urandom(40_000),
        "sub/deeper/c.txt": b"c" * 10_000,
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


@asynccontextmanager
async def agent(
    dataplane: FakeDataPlane, broker: int, state_dir: Path
) -> AsyncIterator[AgentService]:
    identity = make_identity(dataplane.url, dataplane.ca_pem, broker)
    service = AgentService(identity, state_dir, retry=FAST)
    await service.start()
    try:
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            await service.link.connected.wait()
        yield service
    finally:
        await service.stop()


@asynccontextmanager
async def server(broker: int) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        "127.0.0.1", broker, identifier=unique_topic("server"), timeout=DEFAULT_TIMEOUT
    ) as client:
        await client.subscribe(EVENTS_TOPIC, qos=1)
        yield client


async def events_until_result(client: aiomqtt.Client, job_id: str) -> list[protocol.Message]:
    """Events up to and including the result of ``job_id``."""
    out: list[protocol.Message] = []
    async with asyncio.timeout(DEFAULT_TIMEOUT * 3):
        async for m in client.messages:
            assert isinstance(m.payload, bytes)
            msg = protocol.decode_message(m.payload)
            if msg.type == protocol.EVENT_HEARTBEAT:
                continue
            out.append(msg)
            if msg.type == protocol.EVENT_RESULT and msg.job_id == job_id:
                return out
    raise AssertionError("event stream ended")


def of(events: list[protocol.Message], kind: str, job_id: str) -> list[protocol.Message]:
    return [e for e in events if e.type == kind and e.job_id == job_id]


async def test_signed_backup_then_restore(
    dataplane: FakeDataPlane, pool: StoragePool, broker: int, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    files = make_tree(src)
    async with server(broker) as srv, agent(dataplane, broker, tmp_path / "state"):
        body = {"data_source_id": "ds1", "paths": [str(src)], "excludes": []}
        await srv.publish(CMD_TOPIC, command(protocol.CMD_BACKUP, "b1", body), qos=1)
        events = await events_until_result(srv, "b1")
        assert len(of(events, protocol.EVENT_ACCEPTED, "b1")) == 1
        result = of(events, protocol.EVENT_RESULT, "b1")[0].body
        assert result["status"] == "succeeded", result
        assert result["stats"]["files"] == 3
        rp_id = result["stats"]["rp_id"]
        assert dataplane.committed == [rp_id]

        # Second backup: everything comes from the files cache, nothing is read.
        await srv.publish(CMD_TOPIC, command(protocol.CMD_BACKUP, "b2", body), qos=1)
        second = of(await events_until_result(srv, "b2"), protocol.EVENT_RESULT, "b2")[0]
        assert second.body["status"] == "succeeded"
        assert second.body["stats"]["unchanged_files"] == 3
        assert second.body["stats"]["bytes_read"] == 0

        dataplane.restores["r1"] = Restore(rp_id)
        target = tmp_path / "restored"
        rbody = {"rp_id": rp_id, "items": [], "target_path": str(target), "conflict": "overwrite"}
        await srv.publish(CMD_TOPIC, command(protocol.CMD_RESTORE, "r1", rbody), qos=1)
        rres = of(await events_until_result(srv, "r1"), protocol.EVENT_RESULT, "r1")[0]
        assert rres.body["status"] == "succeeded", rres.body
    rel_src = str(src).lstrip("/")
    for rel, data in files.items():
        assert (target / rel_src / rel).read_bytes() == data


async def test_bad_commands_are_dropped(
    dataplane: FakeDataPlane, broker: int, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_tree(src)
    body = {"data_source_id": "ds1", "paths": [str(src)], "excludes": []}
    unsigned = command(protocol.CMD_BACKUP, "unsigned", body, key=None)
    wrong_key = command(protocol.CMD_BACKUP, "wrong-key", body, key=b"k" * 32)
    expired = command(protocol.CMD_BACKUP, "expired", body, expires_in=-5)
    other_agent = command(protocol.CMD_BACKUP, "other-agent", body, agent_id="agent2")
    tampered_doc = json.loads(command(protocol.CMD_BACKUP, "tampered", body))
    tampered_doc["body"]["paths"] = ["/etc"]
    tampered = json.dumps(tampered_doc).encode()
    async with server(broker) as srv, agent(dataplane, broker, tmp_path / "state"):
        for payload in (unsigned, wrong_key, expired, other_agent, tampered, b"not json"):
            await srv.publish(CMD_TOPIC, payload, qos=1)
        await srv.publish(CMD_TOPIC, command(protocol.CMD_BACKUP, "good", body), qos=1)
        events = await events_until_result(srv, "good")
    assert {e.job_id for e in events} == {"good"}
    assert dataplane.calls["open"] == 1


async def test_duplicate_job_runs_once_also_after_restart(
    dataplane: FakeDataPlane, broker: int, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_tree(src)
    state = tmp_path / "state"
    body = {"data_source_id": "ds1", "paths": [str(src)], "excludes": []}
    dup = command(protocol.CMD_BACKUP, "dup", body)
    async with server(broker) as srv:
        async with agent(dataplane, broker, state):
            await srv.publish(CMD_TOPIC, dup, qos=1)
            await srv.publish(CMD_TOPIC, dup, qos=1)
            await srv.publish(CMD_TOPIC, command(protocol.CMD_BACKUP, "ctl1", body), qos=1)
            events = await events_until_result(srv, "ctl1")
            if not of(events, protocol.EVENT_RESULT, "dup"):
                events += await events_until_result(srv, "dup")
        async with agent(dataplane, broker, state):
            await srv.publish(CMD_TOPIC, dup, qos=1)
            await srv.publish(CMD_TOPIC, command(protocol.CMD_BACKUP, "ctl2", body), qos=1)
            events += await events_until_result(srv, "ctl2")
    assert len(of(events, protocol.EVENT_ACCEPTED, "dup")) == 1
    assert len(of(events, protocol.EVENT_RESULT, "dup")) == 1
    assert dataplane.calls["open"] == 3  # dup, ctl1, ctl2
    ledger = json.loads((state / "jobs.json").read_text())
    assert ledger["jobs"]["dup"]["state"] == "succeeded"
    assert (state / "jobs.json").stat().st_mode & 0o077 == 0


async def test_cancel_aborts_the_session(
    dataplane: FakeDataPlane, broker: int, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_tree(src)
    body = {"data_source_id": "ds1", "paths": [str(src)], "excludes": []}
    dataplane.holds["chunks"] = asyncio.Event()  # uploads stall: the job cannot finish
    dataplane.arrived["chunks"] = asyncio.Event()
    async with server(broker) as srv, agent(dataplane, broker, tmp_path / "state"):
        await srv.publish(CMD_TOPIC, command(protocol.CMD_BACKUP, "c1", body), qos=1)
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            await dataplane.arrived["chunks"].wait()
        await srv.publish(CMD_TOPIC, command(protocol.CMD_CANCEL, "c1", {"job_id": "c1"}), qos=1)
        events = await events_until_result(srv, "c1")
        dataplane.holds["chunks"].set()
    result = of(events, protocol.EVENT_RESULT, "c1")[0].body
    assert result["status"] == "cancelled"
    assert len(dataplane.aborted) == 1
    assert dataplane.committed == []


async def test_state_online_is_retained(
    dataplane: FakeDataPlane, broker: int, tmp_path: Path
) -> None:
    async with (
        agent(dataplane, broker, tmp_path / "state"),
        aiomqtt.Client("127.0.0.1", broker, timeout=DEFAULT_TIMEOUT) as watcher,
    ):
        await watcher.subscribe(STATE_TOPIC, qos=1)
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            message = await anext(watcher.messages)
    assert message.retain
    assert isinstance(message.payload, bytes)
    state = protocol.decode_message(message.payload)
    assert state.body["state"] == "online"
    assert state.body["running_jobs"] == []
