"""``stockade-agent``: the protected-machine daemon's entry point.

The agent (scanner, chunker, uploader, restorer over MQTT + HTTP) arrives in a later issue.
For now this parses the command line, sets up logging and says so.
"""

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Final

import structlog

from agent import __version__

__all__ = ["EXIT_NOT_AVAILABLE", "main"]

PROG: Final = "stockade-agent"
EXIT_NOT_AVAILABLE: Final = 2

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
        default="info",
        help="minimum level of log events written to stdout (default: info)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and return the process exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits for --help, --version and bad usage
        return exc.code if isinstance(exc.code, int) else EXIT_NOT_AVAILABLE
    _configure_logging(args.log_level)
    structlog.get_logger().error("daemon_not_available", version=__version__)
    sys.stderr.write(
        f"{PROG}: the agent daemon is not available yet; it arrives in a later issue\n"
    )
    return EXIT_NOT_AVAILABLE
