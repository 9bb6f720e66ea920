"""Isolation between agents and hostile input, against the real server.

Agent A may not read or restore B's data over HTTP, nor learn through dedup what B
stored; a chunk uploaded under the wrong id is refused; malformed HTTP bodies and MQTT
payloads get a clear error and do not take the server down.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import time
from pathlib import Path
from typing import Any

import aiomqtt
import msgpack

from agent import protocol as p
from storage_pool import framing
from tests.support.stack import AgentProc, Stack


def agent_token(agent: AgentProc) -> str:
    ident = agent.identity()
    return f"{ident['agent_id']}:{ident['credential']}"


def backed_up(stack: Stack, tmp_path: Path, name: str, data: bytes) -> tuple[AgentProc, str, str]:
    src = tmp_path / f"src-{name}"
    src.mkdir()
    (src / "secret.bin").write_bytes(data)
    agent = stack.add_agent(name)
    ds = stack.add_files_source(name, [src])
    assert stack.backup(ds["id"])["state"] == "succeeded"
    rp = stack.recovery_points(ds["id"])[0]["id"]
    return agent, ds["id"], rp


def test_agents_cannot_touch_each_others_data(stack: Stack, tmp_path: Path) -> None:
    secret = b"alpha's secret " * 1000
    _, ds_a, rp_a = backed_up(stack, tmp_path, "alpha", secret)
    beta, _, _ = backed_up(stack, tmp_path, "beta", b"beta data")
    srv = stack.server
    tok_b = agent_token(beta)

    # The operator API is not for agents.
    status, _ = srv.api("GET", "/api/v1/recovery-points", token=tok_b)
    assert status == 401
    status, _ = srv.api("POST", "/api/v1/jobs/backup", {"data_source": ds_a}, token=tok_b)
    assert status == 401

    # A restore job of alpha's RP targeted at alpha: beta cannot read it.
    target = tmp_path / "t"
    job = stack.cli(
        "Start-Restore", "-RecoveryPoint", rp_a, "-TargetPath", str(target), "-Json", check=True
    ).json()
    job = job[0] if isinstance(job, list) else job
    status, body = srv.api("GET", f"{p.AGENT_API}/restores/{job['id']}/entries", token=tok_b)
    assert status in (403, 404, 409), (status, body)
    status, body = srv.api(
        "POST",
        f"{p.AGENT_API}/restores/{job['id']}/chunks",
        raw=hashlib.sha256(secret[:100]).digest(),
        token=tok_b,
    )
    assert status in (403, 404, 409)
    # Nor open a backup session on alpha's job ids.
    status, _ = srv.api("POST", f"{p.AGENT_API}/sessions", {"job_id": job["id"]}, token=tok_b)
    assert status in (403, 404, 409)
    stack.wait_job(job["id"])


def test_dedup_does_not_reveal_other_agents_chunks(stack: Stack, tmp_path: Path) -> None:
    """Guards against probing: beta asking about a chunk only alpha stored hears 'missing',
    and its own chunks (uploaded in the session) are then 'present'."""
    secret = b"only alpha has this " * 500  # one small file: one chunk
    backed_up(stack, tmp_path, "alpha", secret)
    beta = stack.add_agent("beta")
    src = tmp_path / "src-beta"
    src.mkdir()
    ds_b = stack.add_files_source("beta", [src])
    beta.stop()  # drive beta's data plane by hand
    job = stack.backup(ds_b["id"], wait=False)
    accept_job(stack, beta, job["id"])
    srv = stack.server
    tok_b = agent_token(beta)
    status, sess = srv.api("POST", f"{p.AGENT_API}/sessions", {"job_id": job["id"]}, token=tok_b)
    assert status == 200, sess
    sid = sess["session_id"]
    alpha_chunk = hashlib.sha256(secret).digest()
    status, body = srv.api(
        "POST", f"{p.AGENT_API}/sessions/{sid}/missing", raw=alpha_chunk, token=tok_b
    )
    assert status == 200 and body == alpha_chunk  # reported missing although stored
    # Uploading it (beta really has the data) makes it usable in beta's session.
    frame = framing.encode(secret, 3)
    status, body = srv.api(
        "POST",
        f"{p.AGENT_API}/sessions/{sid}/chunks",
        raw=p.pack_record(alpha_chunk, frame),
        token=tok_b,
    )
    assert status == 200 and body["new_chunks"] == 0, body  # dedup still saves the space
    status, body = srv.api(
        "POST", f"{p.AGENT_API}/sessions/{sid}/missing", raw=alpha_chunk, token=tok_b
    )
    assert status == 200 and body == b""


def test_wrong_chunk_id_and_malformed_bodies(stack: Stack, tmp_path: Path) -> None:
    agent = stack.add_agent("alpha")
    src = tmp_path / "src"
    src.mkdir()
    ds = stack.add_files_source("alpha", [src])
    agent.stop()  # drive the data plane by hand for a job of this agent
    job = stack.backup(ds["id"], wait=False)
    # The job is dispatched when the agent is online and runs when it accepts; accept it
    # ourselves by publishing the event the agent would.
    accept_job(stack, agent, job["id"])
    srv = stack.server
    tok = agent_token(agent)
    status, sess = srv.api("POST", f"{p.AGENT_API}/sessions", {"job_id": job["id"]}, token=tok)
    assert status == 200, sess
    sid = sess["session_id"]
    data = b"hello chunk"
    frame = framing.encode(data, 3)
    wrong = hashlib.sha256(b"something else").digest()
    status, body = srv.api(
        "POST", f"{p.AGENT_API}/sessions/{sid}/chunks", raw=p.pack_record(wrong, frame), token=tok
    )
    assert status == 422 and wrong.hex() in body["error"], body
    for path, raw in [
        (f"{p.AGENT_API}/sessions/{sid}/chunks", b"\x00" * 10),
        (f"{p.AGENT_API}/sessions/{sid}/missing", b"\x01" * 33),
        (f"{p.AGENT_API}/sessions/{sid}/entries", b"\xc1\xc1 not msgpack"),
        (f"{p.AGENT_API}/sessions", b"{not json"),
    ]:
        status, body = srv.api("POST", path, raw=raw, token=tok)
        assert status == 400 and body["error"], (path, status, body)
    # A manifest entry escaping the tree is refused by the session.
    bad = msgpack.packb({"p": b"../../etc/passwd", "t": "f", "s": 0}, use_bin_type=True)
    status, body = srv.api("POST", f"{p.AGENT_API}/sessions/{sid}/entries", raw=bad, token=tok)
    assert status == 400
    status, _ = srv.api("GET", "/api/v1/health")
    assert status == 200
    assert stack.recovery_points(ds["id"]) == []


def accept_job(stack: Stack, agent: AgentProc, job_id: str) -> None:
    """Play the (stopped) agent's part on MQTT: come online, then accept `job_id`."""
    agent_id = agent.identity()["agent_id"]
    online = p.Message(
        p.STATE, agent_id, {"state": "online", "running_jobs": []}, issued_at=time.time()
    )
    publish_as(stack, agent, "state", p.encode_message(online))
    accepted = p.Message(p.EVENT_ACCEPTED, agent_id, {}, job_id=job_id, issued_at=time.time())
    deadline = time.monotonic() + 30
    while stack.job(job_id)["state"] != "running":  # dispatch waits for the online state
        publish_as(stack, agent, "events", p.encode_message(accepted))
        time.sleep(0.3)
        assert time.monotonic() < deadline, stack.server.tail()


def publish_as(stack: Stack, agent: AgentProc, kind: str, payload: bytes) -> None:
    """Publish on the agent's own `kind` topic with the agent's broker identity."""
    ident = agent.identity()

    async def run() -> None:
        ctx = ssl.create_default_context(cadata=ident["ca_pem"])
        async with aiomqtt.Client(
            "127.0.0.1",
            stack.server.mqtt_port,
            username=ident["agent_id"],
            password=ident.get("mqtt_password") or ident["credential"],
            tls_context=ctx,
            identifier=f"{ident['agent_id']}-raw",
        ) as client:
            await client.publish(p.topic(ident["agent_id"], kind), payload, qos=1)

    asyncio.run(run())


def test_malformed_mqtt_payloads_do_not_crash_the_server(stack: Stack) -> None:
    agent = stack.add_agent("alpha")
    ident = agent.identity()
    other: dict[str, Any] = {
        "schema": "stockade.v1.event.result",
        "agent_id": "someoneelse",
        "msg_id": "x",
        "issued_at": 1,
        "body": {},
    }
    for payload in [
        b"\xff\xfe garbage",
        b"[]",
        b'{"schema": "stockade.v1.nope"}',
        json.dumps(other).encode(),  # claims another agent's id on alpha's topic
        b"{" * 100_000,
    ]:
        publish_as(stack, agent, "events", payload)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = [e.get("event") for e in stack.server.log_events()]
        if events.count("bad_mqtt_message") >= 4 and "mqtt_sender_mismatch" in events:
            break
        time.sleep(0.2)
    events = [e.get("event") for e in stack.server.log_events()]
    assert events.count("bad_mqtt_message") >= 4, events[-30:]
    assert "mqtt_sender_mismatch" in events
    status, _ = stack.server.api("GET", "/api/v1/health")
    assert status == 200
    assert stack.server.proc is not None and stack.server.proc.poll() is None
    agents = stack.cli("Get-Agent", "-Json", check=True).json()
    assert [a["id"] for a in agents] == [ident["agent_id"]]
