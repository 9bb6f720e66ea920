"""A small real data plane for the agent's tests: aiohttp over TLS, a real storage pool.

It speaks the wire formats of ``agent.protocol`` against a real ``StoragePool`` (sessions,
uploads verified by re-hashing, commits, restore reads), so the agent's client, target and
runners are exercised end to end without the real server. What it does not do: catalog,
authorisation beyond one bearer token, the "may reference only its own chunks" rule.
``POST /api/v1/register`` accepts ``REGISTER_TOKEN`` once (then 403, like a used token).

Faults for retry tests: ``faults`` maps a route name (``missing``, ``chunks``, ``entries``,
``restore_chunks`` ...) to a list of statuses answered (and consumed) before the real
handler runs; the status ``0`` means "drop the connection" instead. ``calls`` counts the
requests per route; ``corrupt`` lists chunk ids whose restore frames are damaged;
``holds`` stalls a route until its event is set; ``arrived[name]`` is set once a route
was called (create it beforehand to wait for it).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from aiohttp import web

from agent import protocol as p
from server.tls import load_or_create_tls
from storage_pool import EncodedChunk, Session, StoragePool, framing
from storage_pool.ids import ChunkId
from storage_pool.manifest import entry_from_wire

TOKEN_OK = "agent1:secret"
REGISTER_TOKEN = "one-time-token"


@dataclass
class Restore:
    rp_id: str
    items: tuple[bytes, ...] = ()


@dataclass
class FakeDataPlane:
    pool: StoragePool
    port: int
    ca_pem: str
    data_source: str = "ds1"
    sessions: dict[str, Session] = field(default_factory=dict)
    jobs: dict[str, Session] = field(default_factory=dict)
    restores: dict[str, Restore] = field(default_factory=dict)
    faults: dict[str, list[int]] = field(default_factory=lambda: collections.defaultdict(list))
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    corrupt: set[bytes] = field(default_factory=set)
    holds: dict[str, asyncio.Event] = field(default_factory=dict)
    arrived: dict[str, asyncio.Event] = field(default_factory=dict)
    aborted: list[str] = field(default_factory=list)
    committed: list[str] = field(default_factory=list)
    registered: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def _err(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class _Handlers:
    """The routes of the fake data plane, over one FakeDataPlane's state."""

    def __init__(self, dp: FakeDataPlane) -> None:
        self.dp = dp

    def route(self, name: str, handler: Any) -> Any:
        dp = self.dp

        async def wrapped(request: web.Request) -> web.StreamResponse:
            dp.calls[name] += 1
            dp.arrived.setdefault(name, asyncio.Event()).set()
            if request.headers.get("Authorization") != f"Bearer {TOKEN_OK}":
                return _err(401, "bad agent credential")
            if dp.faults[name]:
                status = dp.faults[name].pop(0)
                if status == 0:
                    assert request.transport is not None
                    request.transport.close()
                    raise ConnectionResetError("fault injected")
                return _err(status, f"injected {status}")
            if name in dp.holds:  # stall this route until the test releases it
                await dp.holds[name].wait()
            resp: web.StreamResponse = await handler(request)
            return resp

        return wrapped

    async def open_session(self, request: web.Request) -> web.Response:
        dp = self.dp
        doc = await request.json()
        parents = await dp.pool.list_recovery_points(dp.data_source)
        parent = parents[-1].id if parents else None
        session = dp.pool.session(dp.data_source, parent=parent)
        dp.sessions[session.id] = session
        dp.jobs[doc["job_id"]] = session
        params = dp.pool.config.chunker
        return web.json_response(
            {
                "session_id": session.id,
                "data_source_id": dp.data_source,
                "parent_rp_id": parent,
                "chunker": {
                    "min_size": params.min_size,
                    "avg_size": params.avg_size,
                    "max_size": params.max_size,
                },
                "compression_level": dp.pool.config.compression_level,
            }
        )

    def session_of(self, request: web.Request) -> Session:
        session = self.dp.sessions.get(request.match_info["sid"])
        if session is None or session.state != "open":
            raise web.HTTPNotFound(
                text='{"error": "no such session"}', content_type="application/json"
            )
        return session

    async def missing(self, request: web.Request) -> web.Response:
        session = self.session_of(request)
        ids = [ChunkId(c) for c in p.iter_id_list(await request.read())]
        gone = await session.missing(ids)
        return web.Response(body=p.pack_ids(gone), content_type="application/octet-stream")

    async def chunks(self, request: web.Request) -> web.Response:
        session = self.session_of(request)
        body = await request.read()
        encoded = []
        for cid, frame in p.iter_records(body):
            size = framing.read_header(frame)[1]
            encoded.append(EncodedChunk(ChunkId(cid), bytes(frame), size))
        result = await session.put(encoded, verify=True)
        return web.json_response(
            {
                "chunks": result.chunks,
                "new_chunks": result.new_chunks,
                "new_stored_bytes": result.new_stored_bytes,
            }
        )

    async def entries(self, request: web.Request) -> web.Response:
        session = self.session_of(request)
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(await request.read())
        batch = [entry_from_wire(doc) for doc in unpacker]
        await session.add_entries(batch)
        return web.json_response({"entries": len(batch)})

    async def commit(self, request: web.Request) -> web.Response:
        rp = await self.session_of(request).commit()
        self.dp.committed.append(rp.id)
        return web.json_response({"rp_id": rp.id})

    async def abort(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        session = self.dp.sessions.get(sid)
        if session is not None:
            session.abort()
        self.dp.aborted.append(sid)
        return web.json_response({"aborted": sid})

    async def restore_entries(self, request: web.Request) -> web.StreamResponse:
        job = self.dp.restores.get(request.match_info["job_id"])
        if job is None:
            return _err(404, "no such restore job")
        rp = await self.dp.pool.get_recovery_point(job.rp_id)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-msgpack"})
        await resp.prepare(request)
        packer = msgpack.Packer(use_bin_type=True)
        async for entry in self.dp.pool.iter_entries(rp):
            await resp.write(packer.pack(entry.to_wire()))
        await resp.write_eof()
        return resp

    async def restore_chunks(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["job_id"] not in self.dp.restores:
            return _err(404, "no such restore job")
        ids = list(p.iter_id_list(await request.read()))
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        for cid in reversed(ids):  # another order than asked: the agent must cope
            frame = await self.dp.pool.read_chunk_frame(ChunkId(cid))
            if cid in self.dp.corrupt:
                frame = frame[:-1] + bytes([frame[-1] ^ 1])
            await resp.write(p.pack_record(cid, frame))
        await resp.write_eof()
        return resp

    async def register(self, request: web.Request) -> web.Response:
        doc = await request.json()
        if doc.get("token") != REGISTER_TOKEN or self.dp.registered:
            return _err(403, "unknown, used or expired registration token")
        self.dp.registered.append(doc)
        return web.json_response(
            {
                "agent_id": "agent1",
                "credential": "secret",
                "command_key": "5a" * 32,
                "ca_pem": self.dp.ca_pem,
                "server_url": self.dp.url,
                "mqtt_url": "mqtts://127.0.0.1:8883",
            }
        )

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


def build_app(dp: FakeDataPlane) -> web.Application:
    h = _Handlers(dp)
    base = p.AGENT_API
    restores = f"{base}/restores/{{job_id}}"
    app = web.Application(client_max_size=80 * 1024 * 1024)
    app.add_routes(
        [
            web.post(f"{base}/sessions", h.route("open", h.open_session)),
            web.post(f"{base}/sessions/{{sid}}/missing", h.route("missing", h.missing)),
            web.post(f"{base}/sessions/{{sid}}/chunks", h.route("chunks", h.chunks)),
            web.post(f"{base}/sessions/{{sid}}/entries", h.route("entries", h.entries)),
            web.post(f"{base}/sessions/{{sid}}/commit", h.route("commit", h.commit)),
            web.delete(f"{base}/sessions/{{sid}}", h.route("abort", h.abort)),
            web.get(f"{restores}/entries", h.route("restore_entries", h.restore_entries)),
            web.post(f"{restores}/chunks", h.route("restore_chunks", h.restore_chunks)),
            web.post("/api/v1/register", h.register),
            web.get("/api/v1/health", h.health),
        ]
    )
    return app


def server_ssl(tls_dir: Path) -> tuple[ssl.SSLContext, str]:
    """A server context with a certificate from a new CA in ``tls_dir``; the CA's PEM."""
    material = load_or_create_tls(tls_dir, hostnames=["127.0.0.1"])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(material.server_cert, material.server_key)
    return ctx, material.ca_pem.decode("ascii")
