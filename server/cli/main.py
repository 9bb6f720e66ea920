"""The operator CLI, ``stockade Verb-Noun [-Param value] ...`` (see CLI.md): dispatch.

``main`` finds the cmdlet (case-insensitively), parses its parameters
(``server/cli/args.py``), runs it against the REST API and turns every failure into a
one-line reason on stderr and an exit code (``server/cli/errors.py``): 0 success (or True),
1 a check that answered False or a job that failed, 2 bad usage or bad input, 3 server
unreachable or unauthorised. stdout carries only the result, so ``-Json`` output parses.
Cmdlets not delivered yet answer "not available yet" (exit 2).
"""

import difflib
import os
import sys
from collections.abc import Sequence
from typing import Final

from server import __version__
from server.cli.args import parse
from server.cli.catalog import CMDLETS, find_cmdlet
from server.cli.cmdlet import Cmdlet, Invocation
from server.cli.errors import (
    EXIT_FALSE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
)
from server.cli.help import PROG, print_cmdlet_help, print_overview

__all__ = [
    "CMDLETS",
    "EXIT_FALSE",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "Cmdlet",
    "find_cmdlet",
    "main",
]

_HELP_WORDS: Final = frozenset({"help", "--help", "-help", "-h", "-?", "get-help"})
_CMDLET_HELP_WORDS: Final = frozenset({"-?", "-help", "--help", "-h"})
_VERSION_WORDS: Final = frozenset({"--version", "-version"})


def _usage_error(message: str) -> int:
    sys.stderr.write(f"{PROG}: {message}\n")
    return EXIT_USAGE


def _unknown_cmdlet(name: str) -> int:
    by_lower = {c.name.lower(): c.name for c in CMDLETS}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    hint = f"; did you mean {by_lower[close[0]]}?" if close else f"; run '{PROG} help' for the list"
    return _usage_error(f"unknown cmdlet {name!r}{hint}")


def _help(topics: Sequence[str]) -> int:
    if not topics:
        print_overview(sys.stdout)
        return EXIT_OK
    if len(topics) > 1:
        return _usage_error("help takes at most one cmdlet name")
    cmdlet = find_cmdlet(topics[0])
    if cmdlet is None:
        return _unknown_cmdlet(topics[0])
    print_cmdlet_help(cmdlet, sys.stdout)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    try:
        code = _dispatch(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()  # surface a closed pipe here, not at interpreter exit
    except BrokenPipeError:
        # The reader went away (`stockade help | head`): no traceback, and no second
        # BrokenPipeError when the interpreter flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FALSE
    return code


def _dispatch(args: list[str]) -> int:
    if not args:
        print_overview(sys.stdout)
        return EXIT_OK
    first, rest = args[0], args[1:]
    if first.lower() in _VERSION_WORDS:
        sys.stdout.write(f"{PROG} {__version__}\n")
        return EXIT_OK
    if first.lower() in _HELP_WORDS:
        return _help(rest)
    cmdlet = find_cmdlet(first)
    if cmdlet is None:
        return _unknown_cmdlet(first)
    if any(a.lower() in _CMDLET_HELP_WORDS for a in rest):
        return _help([cmdlet.name])
    if cmdlet.run is None:
        return _usage_error(f"{cmdlet.name} is not available yet in this version ({__version__})")
    try:
        parsed = parse(cmdlet.name, cmdlet.params, rest, positional=cmdlet.positional)
        invocation = Invocation(cmdlet.name, parsed, sys.stdout, sys.stderr, os.environ)
        return cmdlet.run(invocation)
    except CliError as err:
        message = str(err)
        if not message.startswith(cmdlet.name):
            message = f"{cmdlet.name}: {message}"
        sys.stderr.write(f"{PROG}: {message}\n")
        return err.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
