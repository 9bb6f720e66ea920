"""``stockade-server``: the backup-host daemon.

Start order (each step needs the one before): data directory -> TLS material -> storage
pool -> catalog (unfinished jobs of a previous run failed, missing RP rows re-added from
the pool) -> operator token and CLI config -> broker (managed Mosquitto or external) ->
job engine, vault connection monitor and bus -> HTTPS listener -> READY=1 to systemd.

Stop order on SIGTERM/SIGINT: STOPPING=1 -> stop taking requests -> running jobs are told
to cancel and marked failed ("server shut down"), open backup sessions aborted (nothing
of them becomes visible: an RP exists only once committed) -> bus, broker, catalog, pool.
SIGHUP reloads the config file; keys that need a restart are logged and ignored.

Exit codes: 0 clean stop, 78 bad configuration (systemd does not restart), 1 crash.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from agent import protocol as p
from agent.sdnotify import Notifier
from server import __version__
from server.alert_rules import AlertRules
from server.alerts import AlertCenter
from server.app import DATA_PLANE_KEY, make_app
from server.broker import BrokerError, ManagedBroker
from server.bus import Bus
from server.capacity import check_backup_capacity
from server.catalog import Catalog, JobKind, JobState
from server.cloud_gate import CloudGate
from server.cloud_health import CloudHealth
from server.config import (
    EXIT_CONFIG,
    ConfigError,
    ServerConfig,
    load_server_config,
    merge_live,
    reload_diff,
)
from server.context import ServerContext
from server.job_stop import server_cancel_by_kind
from server.jobs import JobLimits, JobManager
from server.logging import LEVELS, configure_logging
from server.maintenance import Maintenance
from server.online_backup import OnlineBackupRunner
from server.online_scheduler import OnlineScheduler
from server.operator_cloud import sync_at_start
from server.operator_vault import registry_for
from server.operator_verify import verify_runner_for
from server.scheduler import Scheduler
from server.scratch_bound import ScratchGuard
from server.throttling import throttle_for
from server.tls import client_ssl_context, load_or_create_tls, write_file_atomic
from server.vault_backends import open_backend
from storage_pool import StoragePool
from storage_pool.config import CONFIG_NAME
from storage_pool.errors import PoolError
from storage_pool.gc import SAFETY_FULL, SafetyParameters

__all__ = ["EXIT_CONFIG", "main"]

PROG: Final = "stockade-server"
EXIT_CRASH: Final = 1
log = structlog.get_logger()


class StartupError(Exception):
    """The server cannot start for a reason the operator must fix (exit 78)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Stockade backup server daemon (disk-to-disk-to-cloud)."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--config", type=Path, help="server.toml (default: embedded defaults)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key, e.g. --set http.port=9443 (repeatable)",
    )
    parser.add_argument("--data-dir", type=Path, help="shortcut for --set server.data_dir=DIR")
    parser.add_argument("--log-level", choices=sorted(LEVELS), help="overrides server.log_level")
    return parser


def _secret_file(path: Path, nbytes: int = 32, prefix: str = "sk_") -> str:
    """Read a secret kept in a 0600 file, creating it on first use. The prefix keeps it
    from starting with '-', which command lines would take for an option."""
    try:
        text = path.read_text().strip()
        if text:
            return text
    except FileNotFoundError:
        pass
    value = prefix + secrets.token_urlsafe(nbytes)
    write_file_atomic(path, value.encode() + b"\n", mode=0o600)
    return value


def mqtt_password(broker_secret: str, agent_id: str) -> str:
    """An agent's broker password, derived so the server never stores it."""
    return hmac.new(broker_secret.encode(), agent_id.encode(), hashlib.sha256).hexdigest()


def _write_cli_config(config: ServerConfig, token: str, ca_file: Path) -> None:
    host = config.http.listen_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"https://{'[' + host + ']' if ':' in host else host}:{config.http.port}"
    text = (
        "# Written by stockade-server for local operators; readable by its owner only.\n"
        f'server_url = "{url}"\n'
        f'token = "{token}"\n'
        f'ca_file = "{ca_file}"\n'
    )
    write_file_atomic(config.cli_config_path, text.encode(), mode=0o600)


async def _open_pool(
    config: ServerConfig, clock_ns: Callable[[], int] = time.time_ns
) -> StoragePool:
    path = config.pool_path
    kwargs: dict[str, Any] = {
        "io_workers": config.pool.io_workers,
        "durability": config.pool.durability,
        "clock": clock_ns,
    }
    if (path / CONFIG_NAME).exists():
        return await StoragePool.open(path, **kwargs)
    log.info("pool_created", path=str(path))
    return await StoragePool.create(path, **kwargs)


@dataclass(slots=True)
class Server:
    config: ServerConfig
    notifier: Notifier
    # What SIGHUP reads again: the same file with the same command-line overrides.
    config_path: Path | None = None
    overrides: dict[str, str] | None = None
    # The time of the catalog, pool and job engine: tests inject a fake one to run days of
    # schedules in seconds. Agent liveness never reads it (see _last_heard).
    clock: Callable[[], float] = field(default=time.time, kw_only=True)
    # Set while serving, for in-process tests that drive the parts directly.
    ctx: ServerContext | None = field(default=None, init=False)
    ready: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    # Monotonic time of each agent's last message: silence is measured in real time, so a
    # clock that jumps ahead does not make every agent look offline.
    _last_heard: dict[str, float] = field(default_factory=dict, init=False)
    # GC's margin for young chunks, in real time (a fake clock does not age chunk files).
    gc_safety: SafetyParameters = field(default=SAFETY_FULL, kw_only=True)
    # Set while serving: schedules and retries, and prune/GC/job history.
    scheduler: Scheduler | None = field(default=None, init=False)
    maintenance: Maintenance | None = field(default=None, init=False)
    alert_rules: AlertRules | None = field(default=None, init=False)
    online: OnlineBackupRunner | None = field(default=None, init=False)
    online_scheduler: OnlineScheduler | None = field(default=None, init=False)
    cloud_health: CloudHealth | None = field(default=None, init=False)

    async def run(self, stop: asyncio.Event, reload: asyncio.Event) -> None:  # noqa: PLR0915 - the start order reads top to bottom
        config = self.config
        data_dir = config.data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            config.scratch_path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as err:
            raise StartupError(f"cannot create data directory {data_dir}: {err}") from err
        public_host = urlsplit(config.public_url).hostname or socket.gethostname()
        tls = await asyncio.to_thread(load_or_create_tls, config.tls_dir, hostnames=[public_host])
        if config.tls_generated:
            ssl_ctx = tls.server_ssl_context()
            ca_pem = tls.ca_pem
            ca_file = tls.ca_cert
        else:
            assert config.http.tls_cert is not None and config.http.tls_key is not None
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(config.http.tls_cert, config.http.tls_key)
            ca_pem = config.http.tls_cert.read_bytes()
            ca_file = config.http.tls_cert

        clock = self.clock
        pool = await _open_pool(
            config, time.time_ns if clock is time.time else lambda: round(clock() * 1e9)
        )
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(pool.close)
            catalog = await Catalog.open(config.catalog_path, clock=clock)
            stack.push_async_callback(catalog.close)
            # Reads the webhook URL per event, so a SIGHUP (self.config) applies at once.
            alerts = AlertCenter(catalog, lambda: self.config.alerts.webhook_url)
            stack.push_async_callback(alerts.close)
            failed = await catalog.fail_unfinished_jobs("the server restarted while it ran")
            report = await catalog.rebuild_from_pool(await pool.list_recovery_points())
            log.info("catalog_ready", unfinished_jobs_failed=failed, rebuild=str(report))

            token = await asyncio.to_thread(_secret_file, data_dir / "operator.token", 32, "sot_")
            await asyncio.to_thread(_write_cli_config, config, token, ca_file)
            broker_secret = await asyncio.to_thread(_secret_file, data_dir / "broker.secret")

            broker: ManagedBroker | None = None
            server_pw = mqtt_password(broker_secret, p.SERVER_USERNAME)
            mqtt = urlsplit(config.server_mqtt_url)
            mqtt_tls = client_ssl_context(tls.ca_pem) if mqtt.scheme == "mqtts" else None
            if config.broker.managed:
                broker = ManagedBroker(
                    config.broker_dir,
                    tls,
                    config.broker.managed_host,
                    config.broker.managed_port,
                    mosquitto=config.broker.mosquitto,
                )
                identities = {p.SERVER_USERNAME: server_pw}
                for a in await catalog.list_agents():
                    if not a.needs_registration:
                        identities[a.id] = mqtt_password(broker_secret, a.id)
                await broker.set_identities(identities)
                try:
                    await broker.start()
                except BrokerError as err:
                    raise StartupError(str(err)) from err
                stack.push_async_callback(broker.stop)
            else:
                if config.broker.password_file is not None:
                    server_pw = config.broker.password_file.read_text().strip()
                if config.broker.ca_file is not None and mqtt_tls is not None:
                    mqtt_tls = client_ssl_context(config.broker.ca_file.read_bytes())

            async def add_identity(agent_id: str, _secret: str) -> None:
                if broker is not None:
                    await broker.add_identity(agent_id, mqtt_password(broker_secret, agent_id))

            async def remove_identity(agent_id: str) -> None:
                if broker is not None:
                    await broker.remove_identity(agent_id)

            ctx = ServerContext(
                config=config,
                catalog=catalog,
                pool=pool,
                operator_token=token,
                ca_pem=ca_pem,
                mqtt_url=config.agent_mqtt_url,
                server_url=config.public_url,
                register_identity=add_identity,
                remove_identity=remove_identity,
                mqtt_password=lambda agent_id: mqtt_password(broker_secret, agent_id),
                clock=clock,
                alerts=alerts,
            )
            self.ctx = ctx
            app = make_app(ctx)
            plane = app[DATA_PLANE_KEY]

            async def on_state(agent_id: str, msg: p.Message) -> None:
                await self._on_state(ctx, agent_id, msg)

            async def on_event(agent_id: str, msg: p.Message) -> None:
                if msg.type == p.EVENT_HEARTBEAT:
                    await self._on_state(ctx, agent_id, msg)
                    return
                await jobs.agent_event(agent_id, msg)

            bus = Bus(
                mqtt.hostname or "127.0.0.1",
                mqtt.port or 8883,
                config.broker.username,
                server_pw,
                mqtt_tls,
                on_state,
                on_event,
            )
            jobs = JobManager(
                catalog,
                bus.publish,
                JobLimits(
                    config.jobs.max_concurrent_backups, float(config.jobs.agent_wait_seconds)
                ),
                on_final=plane.job_ended,
                clock=clock,
            )
            ctx.jobs = jobs
            jobs.capacity_check = lambda: check_backup_capacity(pool.root, self.config.pool, alerts)
            rules = AlertRules(catalog, alerts, pool.root, lambda: self.config, clock)
            self.alert_rules = rules
            scheduler = Scheduler(catalog, jobs, alerts, lambda: self.config, clock)
            maintenance = Maintenance(
                catalog, pool, alerts, lambda: self.config, clock, gc_safety=self.gc_safety
            )
            self.scheduler, self.maintenance = scheduler, maintenance
            scratch = ScratchGuard(catalog, alerts, lambda: self.config)
            await scratch.clean_at_start()
            # Every vault operation reports to the connection monitor through these openers.
            registry = registry_for(ctx)
            cloud = CloudHealth(catalog, registry, lambda: self.config, clock, alerts)
            registry.use_opener(cloud.opener())
            stack.callback(registry.use_opener, open_backend)
            stack.push_async_callback(cloud.close)
            await cloud.load()
            ctx.cloud, self.cloud_health = cloud, cloud
            online = OnlineBackupRunner(
                catalog,
                pool,
                registry,
                lambda: self.config,
                clock,
                scratch=scratch,
                throttle=throttle_for(ctx),
                opener=cloud.opener(retry=None),
            )
            online_scheduler = OnlineScheduler(
                catalog, online, alerts, lambda: self.config, clock, scratch=scratch
            )
            ctx.online = online
            jobs.server_cancel = server_cancel_by_kind(
                {
                    JobKind.ONLINE_BACKUP: online.cancel,
                    JobKind.VERIFY: verify_runner_for(ctx).cancel,
                }
            )
            # Every job start asks the gate; a state change stops what the table stops.
            gate = CloudGate(cloud.status, jobs=jobs, online=online)
            ctx.cloud_gate = jobs.gate = online.gate = gate
            verify_runner_for(ctx).gate = gate  # healing a disk verify from the vault
            stack.callback(cloud.subscribe(gate.on_change))
            maintenance.online = online  # cloud GC shares the runner's vault and writer lock
            self.online, self.online_scheduler = online, online_scheduler

            runner = web.AppRunner(
                app, shutdown_timeout=float(config.server.shutdown_grace_seconds)
            )
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            site = web.TCPSite(
                runner, config.http.listen_host, config.http.port, ssl_context=ssl_ctx
            )
            try:
                await site.start()
            except OSError as err:
                raise StartupError(
                    f"cannot listen on {config.http.listen_host}:{config.http.port}: {err}"
                ) from err

            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(bus.run(), name="bus"),
                    tg.create_task(jobs.run(), name="jobs"),
                    tg.create_task(self._presence_monitor(ctx), name="presence"),
                    tg.create_task(plane.reap_idle(), name="session-reaper"),
                    tg.create_task(self._watchdog(), name="watchdog"),
                    tg.create_task(self._reloader(reload), name="reload"),
                    tg.create_task(rules.run(), name="alert-rules"),
                    tg.create_task(scheduler.run(), name="scheduler"),
                    tg.create_task(maintenance.run(), name="maintenance"),
                    tg.create_task(online.run(), name="online-backup"),
                    tg.create_task(online_scheduler.run(), name="online-scheduler"),
                    tg.create_task(verify_runner_for(ctx).run(), name="verify-jobs"),
                    tg.create_task(sync_at_start(ctx), name="vault-sync"),
                    tg.create_task(cloud.run(), name="cloud-health"),
                ]
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):
                        await bus.connected.wait()
                log.info(
                    "server_ready",
                    version=__version__,
                    url=config.public_url,
                    data_dir=str(data_dir),
                    broker=config.server_mqtt_url,
                )
                self.notifier.ready(f"serving on {config.public_url}")
                self.ready.set()
                await stop.wait()
                self.ready.clear()
                self.notifier.stopping("shutting down")
                log.info("server_stopping")
                await online.shutdown()
                await self._abandon_jobs(ctx, jobs)
                plane.abort_all()
                for t in tasks:
                    t.cancel()
        self.ctx = None
        log.info("server_stopped")

    async def _abandon_jobs(self, ctx: ServerContext, jobs: JobManager) -> None:
        """Fail what is queued or running, as transient so the scheduler retries it once
        the server is back; agents running a job are told to cancel it."""
        for job in await ctx.catalog.list_jobs(state=JobState.RUNNING, limit=100_000):
            with contextlib.suppress(Exception):
                await jobs.cancel(job.id)
            with contextlib.suppress(Exception):
                await ctx.catalog.transition_job(
                    job.id,
                    JobState.FAILED,
                    error="the server shut down while it ran",
                    retryable=True,
                )
        for job in await ctx.catalog.list_jobs(state=JobState.QUEUED, limit=100_000):
            with contextlib.suppress(Exception):
                await ctx.catalog.transition_job(
                    job.id,
                    JobState.FAILED,
                    error="the server shut down before the job started",
                    retryable=True,
                )

    async def _on_state(self, ctx: ServerContext, agent_id: str, msg: p.Message) -> None:
        try:
            agent = await ctx.catalog.get_agent(agent_id)
        except Exception:
            log.warning("message_from_unknown_agent", agent_id=agent_id)
            return
        if agent.removed_at is not None:
            return
        online = msg.type == p.EVENT_HEARTBEAT or msg.body.get("state") == "online"
        running = msg.body.get("running_jobs", [])
        if not isinstance(running, list):
            running = []
        version = msg.body.get("version")
        now = ctx.clock()
        if online:
            self._last_heard[agent.id] = time.monotonic()
        await ctx.catalog.set_agent_presence(
            agent.id, online, now, version=version if isinstance(version, str) else None
        )
        if msg.type == p.STATE or not agent.online:
            await ctx.job_manager().agent_state(
                agent_id, online, [j for j in running if isinstance(j, str)]
            )
            log.info("agent_presence", agent_id=agent_id, online=online)

    async def _presence_monitor(self, ctx: ServerContext) -> None:
        """An agent that stops heartbeating is offline even if its last will got lost."""
        # An agent not heard from since this process started gets a full period from
        # the start: earlier silence was not observed in real time.
        started = time.monotonic()
        while True:
            await asyncio.sleep(max(1.0, self.config.agents.heartbeat_seconds / 2))
            limit = self.config.agents.offline_after_seconds
            agents = await ctx.catalog.list_agents()
            for agent in agents:
                heard = self._last_heard.get(agent.id, started)
                if agent.online and heard < time.monotonic() - limit:
                    await ctx.catalog.set_agent_presence(agent.id, False, ctx.clock())
                    await ctx.job_manager().agent_state(agent.id, False, [])
                    log.info("agent_presence", agent_id=agent.id, online=False, why="silent")
            running = await ctx.catalog.list_jobs(state=JobState.RUNNING, limit=10_000)
            online = sum(1 for a in agents if a.online)
            self.notifier.status(
                f"{online}/{len(agents)} agents online, {len(running)} jobs running"
            )

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _reloader(self, reload: asyncio.Event) -> None:
        while True:
            await reload.wait()
            reload.clear()
            self.notifier.reloading("reloading configuration")
            try:
                new = load_server_config(self.config_path, overrides=self.overrides)
                live, restart = reload_diff(self.config, new)
                self.config = merge_live(self.config, new)
                if self.ctx is not None:  # the data plane reads the reserve from it
                    self.ctx.config = self.config
                configure_logging(self.config.server.log_level)
                log.info("config_reloaded", applied=live, need_restart=restart)
            except ConfigError as err:
                log.error("config_reload_failed", error=str(err))
            self.notifier.ready("serving")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the daemon; return the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits for --help, --version and bad usage
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    overrides: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            sys.stderr.write(f"{PROG}: --set needs SECTION.KEY=VALUE, got {item!r}\n")
            return EXIT_CONFIG
        overrides[key] = value
    if args.data_dir is not None:
        overrides["server.data_dir"] = str(args.data_dir.absolute())
    if args.log_level:
        overrides["server.log_level"] = args.log_level
    try:
        config = load_server_config(args.config, overrides=overrides)
    except ConfigError as err:
        sys.stderr.write(f"{PROG}: {err}\n")
        return EXIT_CONFIG
    configure_logging(config.server.log_level)
    server = Server(config, Notifier.from_env(), args.config, overrides)
    try:
        asyncio.run(_run(server))
    except StartupError as err:
        log.error("server_start_failed", error=str(err))
        sys.stderr.write(f"{PROG}: {err}\n")
        return EXIT_CONFIG
    except PoolError as err:
        log.error("server_start_failed", error=str(err))
        sys.stderr.write(f"{PROG}: storage pool: {err}\n")
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 0
    except Exception:
        log.exception("server_crashed")
        return EXIT_CRASH
    return 0


async def _run(server: Server) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    try:
        await server.run(stop, reload)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    os.environ.pop("NOTIFY_SOCKET", None)
