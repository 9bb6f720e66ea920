"""``stockade-agent``: the protected-machine daemon's entry point.

``stockade-agent register --server URL --token T [--name N] [--ca-file F] [--state-dir D]``
trades a one-time token for an identity (``agent.registration`` explains the trust on
first use) and saves it 0600 in the state dir. A refused token prints the server's reason
and exits 1.

``stockade-agent [run] [--config F] [--state-dir D]`` runs the daemon:

* start-up: settings (``agent.config``), identity and the job ledger are loaded before
  anything connects; a bad config or a missing identity exits 78 (EX_CONFIG, which the
  unit's ``RestartPreventExitStatus=`` honours) with the reason on stderr;
* the MQTT link (``agent.mqtt_link``) connects and reconnects in the background; sd_notify
  READY is sent after the first broker connect, or after ``READY_TIMEOUT`` (10 s) without
  one (the status line then says the broker is not reachable yet: the agent is useful
  once it comes back, and a start must not fail because the server host reboots);
* WATCHDOG pings come from a loop task, so a stuck event loop misses them;
* SIGTERM/SIGINT: STOPPING, every running job is cancelled (sessions aborted, results
  ``cancelled`` published), the retained state ``offline`` is published, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import structlog

from agent import __version__
from agent.config import (
    EXIT_CONFIG,
    AgentConfig,
    AgentIdentity,
    ConfigError,
    load_agent_config,
    load_identity,
    save_identity,
)
from agent.job_ledger import JobLedger
from agent.mqtt_link import MqttLink
from agent.registration import RegistrationError, check_pinned, register
from agent.sdnotify import Notifier
from agent.service import AgentService

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "main"]

PROG: Final = "stockade-agent"
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
READY_TIMEOUT: Final = 10.0

log = structlog.get_logger()

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _configure_logging(level: str) -> None:
    # The agent may not import server.logging (import contract: agent never imports server).
    # Same output shape as the server: JSON lines off a terminal, console renderer on one.
    render_chain: list[structlog.types.Processor] = (
        [structlog.dev.ConsoleRenderer()]
        if sys.stdout.isatty()
        else [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *render_chain,
        ],
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        cache_logger_on_first_use=False,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Stockade agent daemon for a protected machine.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "--log-level",
        choices=sorted(_LEVELS),
        default=None,
        help="minimum level of log events written to stdout (default: the config's, info)",
    )
    sub = parser.add_subparsers(dest="command", metavar="{run,register}")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="agent.toml (default: embedded defaults)")
        p.add_argument(
            "--state-dir",
            type=Path,
            help="where the identity, job ledger and files cache live"
            " (default: /var/lib/stockade-agent as root)",
        )

    run = sub.add_parser("run", help="run the daemon (the default)")
    common(run)
    reg = sub.add_parser("register", help="register this machine with a server")
    common(reg)
    reg.add_argument("--server", required=True, help="https://host:port of the server")
    reg.add_argument("--token", required=True, help="one-time token from New-AgentToken")
    reg.add_argument("--name", help="agent name (default: the host name)")
    reg.add_argument(
        "--ca-file",
        type=Path,
        help="the server's CA certificate (PEM); without it the CA is trusted on first use",
    )
    reg.add_argument(
        "--force", action="store_true", help="replace an existing identity of this agent"
    )
    return parser


def _err(message: str) -> None:
    sys.stderr.write(f"{PROG}: {message}\n")


def _load_config(args: argparse.Namespace) -> AgentConfig:
    overrides: dict[str, str] = {}
    if args.state_dir is not None:
        overrides["agent.state_dir"] = str(args.state_dir.absolute())
    if args.log_level is not None:
        overrides["agent.log_level"] = args.log_level
    return load_agent_config(args.config, overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and return the process exit code."""
    raw = list(sys.argv[1:] if argv is None else argv)
    if not any(a in ("run", "register") for a in raw) and not {"-h", "--help", "--version"} & set(
        raw
    ):
        raw = [*_leading_globals(raw), "run", *raw[len(_leading_globals(raw)) :]]
    try:
        args = _parser().parse_args(raw)
    except SystemExit as exc:  # argparse exits for --help, --version and bad usage
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        config = _load_config(args)
    except ConfigError as err:
        _configure_logging(args.log_level or "info")
        _err(f"bad configuration: {err}")
        return EXIT_CONFIG
    _configure_logging(config.log_level)
    if args.command == "register":
        return _register_command(args, config)
    return _run_command(config)


def _leading_globals(raw: list[str]) -> list[str]:
    """The global options before the (implicit) subcommand: ``--log-level X``."""
    out: list[str] = []
    i = 0
    while i < len(raw) and raw[i] == "--log-level" and i + 1 < len(raw):
        out += raw[i : i + 2]
        i += 2
    return out


# --------------------------------------------------------------------------- register


def _register_command(args: argparse.Namespace, config: AgentConfig) -> int:
    path = config.identity_path
    if path.exists() and not args.force:
        _err(f"already registered ({path} exists); use --force to register again")
        return EXIT_FAILED
    ca_pem: str | None = None
    if args.ca_file is not None:
        try:
            ca_pem = args.ca_file.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as err:
            _err(f"cannot read --ca-file {args.ca_file}: {err}")
            return EXIT_FAILED
    hostname = socket.gethostname()
    try:
        result = asyncio.run(
            register(
                args.server,
                args.token,
                name=args.name or hostname,
                hostname=hostname,
                ca_pem=ca_pem,
            )
        )
    except RegistrationError as err:
        _err(f"registration failed: {err}")
        return EXIT_FAILED
    identity = result.identity
    how = "trusted on first use" if result.pinned_on_first_use else "matches --ca-file"
    print(f"server CA SHA-256 fingerprint: {result.ca_fingerprint} ({how})")
    if result.pinned_on_first_use:
        print("compare it with the fingerprint the server prints; if they differ, remove")
        print(f"{path} and register again with --ca-file.")
    try:
        save_identity(path, identity)
    except (ConfigError, OSError) as err:
        _err(f"cannot save the identity to {path}: {err}")
        return EXIT_FAILED
    print(f"registered as agent {identity.agent_id}; identity saved to {path}")
    problem = asyncio.run(check_pinned(identity))
    if problem is not None:
        _err(f"warning: the server does not verify with the pinned CA: {problem}")
    return 0


# --------------------------------------------------------------------------- run


def _run_command(config: AgentConfig) -> int:
    try:
        identity = load_identity(config.identity_path)
    except ConfigError as err:
        _err(str(err))
        return EXIT_CONFIG
    try:
        config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        ledger = JobLedger.load(config.state_dir)
    except OSError as err:
        _err(f"state dir {config.state_dir} unusable: {err}")
        return EXIT_CONFIG
    notifier = Notifier.from_env()
    return asyncio.run(_serve(config, identity, ledger, notifier))


async def _serve(
    config: AgentConfig, identity: AgentIdentity, ledger: JobLedger, notifier: Notifier
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    structlog.contextvars.bind_contextvars(agent_id=identity.agent_id)
    log.info("agent_starting", version=__version__, state_dir=str(config.state_dir))

    service = AgentService(
        identity, config.state_dir, workers=config.upload_parallelism, ledger=ledger
    )
    await service.start()
    watchdog = asyncio.create_task(_watchdog(notifier), name="sd-watchdog")
    ready = asyncio.create_task(_ready(service.link, notifier), name="sd-ready")
    await stop.wait()

    log.info("agent_stopping", running_jobs=service.jobs.running_jobs())
    notifier.stopping("cancelling running jobs")
    ready.cancel()
    await service.stop()
    watchdog.cancel()
    for task in (ready, watchdog):
        with contextlib.suppress(asyncio.CancelledError):
            await task
    log.info("agent_stopped")
    return 0


async def _ready(link: MqttLink, notifier: Notifier) -> None:
    try:
        await asyncio.wait_for(link.connected_once.wait(), READY_TIMEOUT)
    except TimeoutError:
        why = f"broker not reachable after {READY_TIMEOUT:.0f} s; retrying in the background"
        log.warning("agent_ready_without_broker", reason=why)
        notifier.ready(f"running; {why}")
        return
    log.info("agent_ready")
    notifier.ready("running; connected to the broker")


async def _watchdog(notifier: Notifier) -> None:
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


if __name__ == "__main__":
    sys.exit(main())
