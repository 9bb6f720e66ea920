"""An in-process Stockade server on a fake clock, with real agents, for schedule tests.

The server (with its real managed Mosquitto) runs as a task of the test's event loop, so
a test reaches the catalog, pool and job engine directly and moves time by hand: days of
schedules take seconds. Agents are real subprocesses. They check only that a command has
not expired (24 h after the server's clock), so the fake clock must never be behind real
time: it starts at the next whole minute and only moves forward. Agent liveness is
measured by the server in real (monotonic) time, so a jump of the clock does not make an
agent look silent.

Everything that talks to the running server is async: a blocking call (subprocess,
urllib) from the test's loop would stall the server it waits for.

    async with SimServer(tmp_path) as sim:
        await sim.add_agent("web")
        ds = await sim.add_data_source("web", [data_dir])
        sim.clock.advance(3 * 86400)
        job = await sim.backup(ds["id"])
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from agent.sdnotify import Notifier
from server.catalog import Catalog, JobRow, JobState
from server.config import ServerConfig, load_server_config
from server.context import ServerContext
from server.daemon import Server
from server.ids import AgentId
from server.jobs import JobManager
from storage_pool import StoragePool
from storage_pool.gc import SAFETY_FULL, SafetyParameters
from tests.support.mqtt import free_port, require_binary
from tests.support.stack import AgentProc, CliResult, kill_managed_broker, run_cli

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
POLL_SECONDS = 0.05
API = "/api/v1"
ACTIVE = (JobState.QUEUED, JobState.RUNNING)


class SimClock:
    """The server's time, moved by hand. Never behind real time (see the module doc)."""

    def __init__(self, start: float | None = None) -> None:
        self._now = float(math.ceil(time.time() / 60) * 60 if start is None else start)

    def now(self) -> float:
        return self._now

    def set(self, t: float) -> None:
        """Jump to unix time `t`; backwards is refused (the catalog orders by time)."""
        if t < self._now:
            raise ValueError(f"the clock only moves forward: {t} is before {self._now}")
        self._now = float(t)

    def advance(self, seconds: float) -> float:
        """Move forward by `seconds`; the new time."""
        self.set(self._now + seconds)
        return self._now


class PassCounter(Notifier):
    """A disabled sd_notify that counts STATUS lines: the presence monitor sends one at
    the end of every pass, so a test can wait for a pass instead of sleeping."""

    def __init__(self) -> None:
        super().__init__(None)
        self.passes = 0
        self._tick = asyncio.Event()

    def status(self, text: str) -> bool:
        self.passes += 1
        self._tick.set()
        self._tick = asyncio.Event()
        return super().status(text)

    async def wait_passes(self, n: int) -> None:
        target = self.passes + n
        while self.passes < target:
            await self._tick.wait()


@dataclass
class SimServer:
    """A `Server` task on `clock` with its data under `base`; ports stay across restarts."""

    base: Path
    clock: SimClock = field(default_factory=SimClock)
    # Extra config keys (SECTION.KEY -> value), as `stockade-server --set` takes them.
    settings: dict[str, str] = field(default_factory=dict)
    # GC's margin for young chunks is real time, which a fake clock does not move: a
    # simulation that wants GC to reclaim anything passes SAFETY_NONE.
    gc_safety: SafetyParameters = SAFETY_FULL
    http_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    agents: dict[str, AgentProc] = field(default_factory=dict)
    server: Server | None = None
    notifier: PassCounter | None = None
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event | None = None
    _http: aiohttp.ClientSession | None = None

    # -- addresses (AgentProc reads url and ca_file) --------------------------------

    @property
    def data_dir(self) -> Path:
        return self.base / "server-data"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    # -- the running server's parts --------------------------------------------------

    @property
    def ctx(self) -> ServerContext:
        self._check_alive()
        assert self.server is not None
        if self.server.ctx is None:
            raise RuntimeError("the sim server is not running")
        return self.server.ctx

    @property
    def catalog(self) -> Catalog:
        return self.ctx.catalog

    @property
    def pool(self) -> StoragePool:
        return self.ctx.pool

    @property
    def jobs(self) -> JobManager:
        return self.ctx.job_manager()

    def config(self) -> ServerConfig:
        overrides = {
            "server.data_dir": str(self.data_dir),
            "http.listen_host": "127.0.0.1",
            "http.port": str(self.http_port),
            "http.public_url": self.url,
            "broker.managed_host": "127.0.0.1",
            "broker.managed_port": str(self.mqtt_port),
            # A presence pass every second (agents still beat every 30 s), so a test
            # waits for one in about a second.
            "agents.heartbeat_seconds": "2",
            **self.settings,
        }
        return load_server_config(None, overrides=overrides)

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> SimServer:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start a new Server on the same data directory, ports and clock; wait until it
        serves. A start-up error (e.g. StartupError) is raised here."""
        if self._task is not None:
            raise RuntimeError("the sim server is already running")
        require_binary("mosquitto")
        self.notifier = PassCounter()
        self.server = Server(
            self.config(), self.notifier, clock=self.clock.now, gc_safety=self.gc_safety
        )
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.server.run(self._stop, asyncio.Event()))
        ready = asyncio.create_task(self.server.ready.wait())
        done, _ = await asyncio.wait(
            {self._task, ready}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            ready.cancel()
            if self._task in done:
                task, self._task = self._task, None
                task.result()  # the start-up error
                raise RuntimeError("the sim server stopped before it was ready")
            await self.stop()
            raise RuntimeError(f"the sim server was not ready in {READY_TIMEOUT} s")
        token = (self.data_dir / "operator.token").read_text().strip()
        self._http = aiohttp.ClientSession(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            connector=aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=self.ca_file)),
        )

    async def stop(self) -> None:
        """Stop the server as SIGTERM does (running jobs fail, sessions abort). Agents keep
        running and reconnect when a server starts on the same ports."""
        if self._http is not None:
            await self._http.close()
            self._http = None
        task, self._task = self._task, None
        if task is None:
            return
        assert self._stop is not None
        self._stop.set()
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await task
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise RuntimeError(f"the sim server did not stop in {STOP_TIMEOUT} s") from None

    async def restart(self, *, wait_agents: bool = True) -> None:
        """Stop, then start on the same data directory, ports and clock; by default wait
        until every started agent is back online."""
        await self.stop()
        await self.start()
        if wait_agents:
            for name, agent in self.agents.items():
                if agent.proc is not None and agent.proc.poll() is None:
                    await self.wait_agent_online(name)

    async def close(self) -> None:
        """Teardown: kill the agents, stop the server, and make sure no broker is left."""
        for agent in self.agents.values():
            agent.stop(signal.SIGKILL)
        try:
            await self.stop()
        finally:
            kill_managed_broker(self.data_dir)

    def _check_alive(self) -> None:
        """A server task that ended on its own crashed: raise its error in the test."""
        if self._task is not None and self._task.done():
            task, self._task = self._task, None
            task.result()
            raise RuntimeError("the sim server stopped on its own")

    # -- operator side -----------------------------------------------------------------

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One operator REST call (path under /api/v1, e.g. "/jobs"); (status, JSON)."""
        self._check_alive()
        if self._http is None:
            raise RuntimeError("the sim server is not running")
        async with self._http.request(method, API + path, json=body) as resp:
            return resp.status, await resp.json(content_type=None)

    async def api_ok(self, method: str, path: str, body: Any = None) -> Any:
        """An operator REST call that must succeed (2xx); its JSON."""
        status, doc = await self.api(method, path, body)
        if not 200 <= status < 300:
            raise AssertionError(f"{method} {path} -> {status}: {doc}")
        return doc

    async def cli(self, *args: str, within: float = 300.0) -> CliResult:
        """The real `stockade` CLI, run in a thread so the server keeps serving."""
        return await asyncio.to_thread(run_cli, self.data_dir / "cli.toml", args, within)

    # -- agents and data -----------------------------------------------------------------

    async def add_agent(self, name: str, *, start: bool = True) -> AgentProc:
        """Register a real agent (state under base/agent-NAME) and, by default, start it
        and wait until the server sees it online."""
        token = (await self.api_ok("POST", "/agent-tokens", {}))["token"]
        agent = AgentProc(self, self.base / f"agent-{name}", name)
        reg = await asyncio.to_thread(agent.register, token)
        if reg.returncode != 0:
            raise AssertionError(f"register {name} failed: {reg.stdout}\n{reg.stderr}")
        self.agents[name] = agent
        if start:
            await self.start_agent(name)
        return agent

    def agent_id(self, name: str) -> AgentId:
        return AgentId(self.agents[name].identity()["agent_id"])

    async def start_agent(self, name: str) -> None:
        self.agents[name].start()
        await self.wait_agent_online(name)

    async def stop_agent(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop an agent process (SIGTERM: clean, it says offline; SIGKILL: last will)."""
        await asyncio.to_thread(self.agents[name].stop, sig)

    async def wait_agent_online(self, name: str, online: bool = True, within: float = 60.0) -> None:
        """Until both the catalog and the job engine see the agent (not) online."""
        agent_id = self.agent_id(name)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            row = await self.catalog.get_agent(agent_id)
            pres = self.jobs.presence.get(agent_id)
            if row.online is online and (pres is not None and pres.online) is online:
                return
            await asyncio.sleep(POLL_SECONDS)
        raise AssertionError(
            f"agent {name} not online={online} after {within} s\n{self.agents[name].tail()}"
        )

    async def wait_presence_pass(self) -> None:
        """Until the server's presence monitor has run one whole pass after this call."""
        assert self.notifier is not None
        self._check_alive()
        # The next STATUS may end a pass that read the agents before this call.
        await self.notifier.wait_passes(2)

    async def add_data_source(
        self,
        agent: str,
        paths: Sequence[Path | str],
        excludes: Sequence[str] = (),
        name: str | None = None,
    ) -> dict[str, Any]:
        """A files data source on `agent` (name or id) via the operator API; its JSON."""
        body: dict[str, Any] = {
            "agent": agent,
            "paths": [str(p) for p in paths],
            "excludes": list(excludes),
        }
        if name is not None:
            body["name"] = name
        doc: dict[str, Any] = await self.api_ok("POST", "/data-sources", body)
        return doc

    # -- jobs ------------------------------------------------------------------------

    async def start_backup(self, data_source: str) -> dict[str, Any]:
        """A manual backup via the operator API; the queued job's JSON."""
        doc: dict[str, Any] = await self.api_ok(
            "POST", "/jobs/backup", {"data_source": data_source}
        )
        return doc

    async def backup(self, data_source: str, within: float = 120.0) -> JobRow:
        """A manual backup, waited for; its final job row."""
        job = await self.start_backup(data_source)
        return await self.wait_job(job["id"], within)

    async def wait_job(self, job_id: str, within: float = 120.0) -> JobRow:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            job = await self.catalog.get_job(job_id)
            if job.state.is_final:
                return job
            await asyncio.sleep(POLL_SECONDS)
        raise AssertionError(f"job {job_id} not final after {within} s\n{self._tails()}")

    async def active_jobs(self) -> list[JobRow]:
        out: list[JobRow] = []
        for state in ACTIVE:
            out += await self.catalog.list_jobs(state=state, limit=100_000)
        return out

    async def wait_jobs_final(self, within: float = 120.0) -> None:
        """Until no job is queued or running. A job queued for an offline agent stays
        queued (the frozen clock never reaches its wait limit): advance the clock first."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not await self.active_jobs():
                return
            await asyncio.sleep(POLL_SECONDS)
        active = [(j.id, j.kind, j.state, j.agent_id) for j in await self.active_jobs()]
        raise AssertionError(f"jobs still active after {within} s: {active}\n{self._tails()}")

    def _tails(self) -> str:
        return "\n".join(f"--- agent {a.name} ---\n{a.tail()}" for a in self.agents.values())
