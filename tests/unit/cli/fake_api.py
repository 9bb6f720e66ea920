"""A test double of the operator REST API (``server/api/__init__.py``), with canned data.

It implements the spec's routes minimally on a real aiohttp server bound to 127.0.0.1 on a
free port, in its own thread and event loop, so tests can call the synchronous CLI
(``main(argv)``) or run it as a subprocess. The real server is integrated later; this double
only has to be faithful to the documented request and answer shapes.

Canned objects: agents ``web01`` and ``db01``; data sources ``web01:/srv``, ``db01:/srv``
(so the bare name ``/srv`` is ambiguous) and ``web01:/etc``; recovery points ``rp-aaa1``,
``rp-aaa2`` (prefix ``rp-aaa`` is ambiguous) and ``rp-b``; jobs ``101`` failed, ``102``
succeeded, ``103`` running forever. A job created by POST moves queued -> running ->
succeeded, one step per GET. Every request is appended to :attr:`FakeApi.requests`.
"""

import asyncio
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

TOKEN: Final = "operator-token-1"
NOW: Final = 1_767_268_800.0  # 2026-01-01 12:00 UTC


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any


def _job(job_id: str, kind: str, state: str, **extra: Any) -> dict[str, Any]:
    ended = state in {"succeeded", "succeeded_with_warnings", "failed", "cancelled"}
    job: dict[str, Any] = {
        "id": job_id,
        "kind": kind,
        "state": state,
        "agent_id": "ag-web01",
        "data_source_id": "ds-web-srv",
        "params": {},
        "progress": {
            "files": 12,
            "bytes": 3 * 1024 * 1024,
            "rate_bps": 1024.0,
            "current_path": "/srv/www/index.html",
        },
        "result": None,
        "error": None,
        "warnings": [],
        "created_at": NOW,
        "started_at": NOW + 1,
        "ended_at": NOW + 60 if ended else None,
    }
    job.update(extra)
    return job


@dataclass
class FakeApi:
    """The double's state; ``url`` is set once the server listens."""

    url: str = ""
    requests: list[Request] = field(default_factory=list)
    agents: list[dict[str, Any]] = field(default_factory=list)
    data_sources: list[dict[str, Any]] = field(default_factory=list)
    recovery_points: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    _next_job: int = 200

    def __post_init__(self) -> None:
        self.agents = [
            {
                "id": "ag-web01",
                "name": "web01",
                "hostname": "web01.lan",
                "online": True,
                "last_seen_at": NOW,
                "last_backup_at": NOW - 3600,
                "version": "0.1.0",
                "created_at": NOW - 86400,
            },
            {
                "id": "ag-db01",
                "name": "db01",
                "hostname": "db01.lan",
                "online": False,
                "last_seen_at": NOW - 7200,
                "last_backup_at": None,
                "version": "0.1.0",
                "created_at": NOW - 86400,
            },
        ]
        self.data_sources = [
            self._ds("ds-web-srv", "ag-web01", "web01", "/srv"),
            self._ds("ds-db-srv", "ag-db01", "db01", "/srv"),
            self._ds("ds-web-etc", "ag-web01", "web01", "/etc"),
        ]
        self.recovery_points = [
            self._rp("rp-aaa1", NOW - 7200),
            self._rp("rp-aaa2", NOW - 3600),
            self._rp("rp-b", NOW - 60),
        ]
        self.jobs = {
            "101": _job("101", "backup", "failed", error="agent web01 went offline"),
            "102": _job("102", "backup", "succeeded"),
            "103": _job("103", "backup", "running"),
        }

    @staticmethod
    def _ds(ds_id: str, agent_id: str, agent_name: str, name: str) -> dict[str, Any]:
        return {
            "id": ds_id,
            "agent_id": agent_id,
            "agent_name": agent_name,
            "name": name,
            "kind": "files",
            "paths": [name],
            "excludes": [],
            "created_at": NOW - 86400,
            "last_rp_at": NOW - 60,
            "rp_count": 3,
        }

    @staticmethod
    def _rp(rp_id: str, created_at: float) -> dict[str, Any]:
        return {
            "id": rp_id,
            "data_source_id": "ds-web-srv",
            "data_source_name": "/srv",
            "agent_id": "ag-web01",
            "agent_name": "web01",
            "created_at": created_at,
            "entries": 40,
            "files": 30,
            "logical_bytes": 5 * 1024**3,
            "tier": "disk",
        }

    def last(self, method: str, path: str) -> Request:
        """The most recent request with this method and path."""
        for request in reversed(self.requests):
            if (request.method, request.path) == (method, path):
                return request
        raise AssertionError(f"no {method} {path} among {self.requests}")

    # ----------------------------------------------------------------------- the app

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record_and_authorise])
        app.add_routes(
            [
                web.get("/api/v1/health", self._health),
                web.post("/api/v1/agent-tokens", self._agent_token),
                web.get("/api/v1/agents", self._agents),
                web.delete("/api/v1/agents/{ref}", self._remove_agent),
                web.get("/api/v1/data-sources", self._list_data_sources),
                web.post("/api/v1/data-sources", self._new_data_source),
                web.delete("/api/v1/data-sources/{id}", self._remove_data_source),
                web.post("/api/v1/jobs/backup", self._backup),
                web.post("/api/v1/jobs/restore", self._restore),
                web.get("/api/v1/jobs", self._list_jobs),
                web.get("/api/v1/jobs/{id}", self._get_job),
                web.post("/api/v1/jobs/{id}/cancel", self._cancel),
                web.get("/api/v1/recovery-points", self._list_rps),
                web.get("/api/v1/recovery-points/{id}/items", self._items),
                web.get("/api/v1/storage-pool", self._pool),
            ]
        )
        return app

    @web.middleware
    async def _record_and_authorise(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        path = request.path.removeprefix("/api/v1")
        self.requests.append(Request(request.method, path, dict(request.query), body))
        if path != "/health" and request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "unknown operator token"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)

    async def _health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": "0.1.0"})

    async def _agent_token(self, request: web.Request) -> web.Response:
        body = await request.json()
        ttl = body.get("ttl_minutes", 60)
        return web.json_response({"token": "reg-token-xyz", "expires_at": NOW + ttl * 60})

    async def _agents(self, _: web.Request) -> web.Response:
        return web.json_response(self.agents)

    async def _remove_agent(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        for agent in self.agents:
            if ref in {agent["id"], agent["name"]}:
                self.agents.remove(agent)
                return web.json_response({"removed": agent["id"]})
        return self._error(404, f"no agent {ref!r}")

    async def _list_data_sources(self, request: web.Request) -> web.Response:
        agent = request.query.get("agent")
        return web.json_response([d for d in self.data_sources if agent in {None, d["agent_id"]}])

    async def _new_data_source(self, request: web.Request) -> web.Response:
        body = await request.json()
        agent = next((a for a in self.agents if a["id"] == body["agent"]), None)
        if agent is None:
            return self._error(404, f"no agent {body['agent']!r}")
        if not body.get("paths"):
            return self._error(400, "paths must not be empty")
        created = self._ds(
            "ds-new", agent["id"], agent["name"], body.get("name") or body["paths"][0]
        )
        created.update(paths=body["paths"], excludes=body["excludes"], rp_count=0, last_rp_at=None)
        self.data_sources.append(created)
        return web.json_response(created)

    async def _remove_data_source(self, request: web.Request) -> web.Response:
        ds_id = request.match_info["id"]
        self.data_sources = [d for d in self.data_sources if d["id"] != ds_id]
        return web.json_response({"removed": ds_id})

    def _new_job(self, kind: str, **extra: Any) -> dict[str, Any]:
        self._next_job += 1
        job = _job(str(self._next_job), kind, "queued", **extra)
        self.jobs[job["id"]] = job
        return job

    async def _backup(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not any(d["id"] == body["data_source"] for d in self.data_sources):
            return self._error(404, f"no data source {body['data_source']!r}")
        return web.json_response(self._new_job("backup", data_source_id=body["data_source"]))

    async def _restore(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("conflict") not in {"overwrite", "skip", "rename"}:
            return self._error(400, "conflict must be overwrite, skip or rename")
        return web.json_response(self._new_job("restore", params=body))

    async def _list_jobs(self, request: web.Request) -> web.Response:
        state = request.query.get("state")
        jobs = [j for j in self.jobs.values() if state in {None, j["state"]}]
        limit = int(request.query.get("limit", "1000"))
        return web.json_response(jobs[:limit])

    async def _get_job(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return self._error(404, f"no job {request.match_info['id']!r}")
        if int(job["id"]) > 200 and job["state"] in {"queued", "running"}:
            following = {"queued": "running", "running": "succeeded"}[job["state"]]
            job.update(state=following, ended_at=NOW + 60 if following == "succeeded" else None)
        return web.json_response(job)

    async def _cancel(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return self._error(404, f"no job {request.match_info['id']!r}")
        if job["ended_at"] is not None:
            return self._error(409, f"job {job['id']} has already ended")
        job.update(state="cancelled", ended_at=NOW + 5)
        return web.json_response(job)

    async def _list_rps(self, request: web.Request) -> web.Response:
        ds = request.query.get("data_source")
        points = [p for p in self.recovery_points if ds in {None, p["data_source_id"]}]
        return web.json_response(points)

    async def _items(self, request: web.Request) -> web.Response:
        if not any(p["id"] == request.match_info["id"] for p in self.recovery_points):
            return self._error(404, f"no recovery point {request.match_info['id']!r}")
        parent = request.query.get("path", "")
        prefix = f"{parent}/" if parent else ""
        return web.json_response(
            [
                {"path": f"{prefix}www", "type": "dir", "size": 0, "mode": 0o40755, "mtime": NOW},
                {
                    "path": f"{prefix}notes.txt",
                    "type": "file",
                    "size": 2048,
                    "mode": 0o100644,
                    "mtime": NOW,
                },
            ]
        )

    async def _pool(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "path": "/var/lib/stockade/pool",
                "recovery_points": 3,
                "logical_bytes": 15 * 1024**3,
                "stored_bytes": 5 * 1024**3,
                "chunk_count": 81920,
                "dedup_ratio": 3.0,
                "fs_total_bytes": 100 * 1024**3,
                "fs_free_bytes": 60 * 1024**3,
                "scratch_path": "/var/lib/stockade/scratch",
                "scratch_used_bytes": 0,
            }
        )


@contextmanager
def running_fake_api(ssl_context: ssl.SSLContext | None = None) -> Iterator[FakeApi]:
    """Serve a fresh :class:`FakeApi` on 127.0.0.1 (free port) in a thread until exit."""
    api = FakeApi()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []
    runner = web.AppRunner(api.app())

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
            loop.run_until_complete(site.start())
            host, port = runner.addresses[0][:2]
            api.url = f"{'https' if ssl_context else 'http'}://{host}:{port}"
        except BaseException as err:  # surfaced in the test thread below
            failure.append(err)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, name="fake-api", daemon=True)
    thread.start()
    ready.wait(timeout=30)
    if failure:
        raise RuntimeError("the fake API did not start") from failure[0]
    try:
        yield api
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
