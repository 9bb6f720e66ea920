"""``stockade-server``: the backup-host daemon's entry point.

The daemon itself (bus, scheduler, jobs, HTTP API, embedded defaults) arrives in the next
issue. For now this parses the command line, sets up logging and says so.
"""

import argparse
import sys
from collections.abc import Sequence
from typing import Final

import structlog

from server import __version__
from server.logging import LEVELS, configure_logging

__all__ = ["EXIT_NOT_AVAILABLE", "main"]

PROG: Final = "stockade-server"
EXIT_NOT_AVAILABLE: Final = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Stockade backup server daemon (disk-to-disk-to-cloud).",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "--log-level",
        choices=sorted(LEVELS),
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
    configure_logging(args.log_level)
    structlog.get_logger().error("daemon_not_available", version=__version__)
    sys.stderr.write(
        f"{PROG}: the server daemon is not available yet; it arrives in the next issue\n"
    )
    return EXIT_NOT_AVAILABLE
