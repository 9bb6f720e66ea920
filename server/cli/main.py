"""The operator CLI, ``stockade Verb-Noun [-Param value] ...`` (see CLI.md).

This version knows the cmdlet names and their one-line summaries; each cmdlet arrives with
the issue that delivers it. Until then a known cmdlet answers "not available yet" (exit 2).

Exit codes: 0 success (or True), 1 a check that answered False or a job that failed,
2 bad usage or bad input, 3 server unreachable or unauthorised.
"""

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TextIO

from server import __version__

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

EXIT_OK: Final = 0
EXIT_FALSE: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3

PROG: Final = "stockade"


@dataclass(frozen=True, slots=True)
class Cmdlet:
    """A CLI command: its canonical ``Verb-Noun`` name and a one-line summary."""

    name: str
    summary: str


# Names are fixed by CLI.md; parameters grow with each issue.
CMDLETS: Final[tuple[Cmdlet, ...]] = (
    Cmdlet("Get-CloudConnection", "cloud connectivity health (True/False), -Detailed, -Probe"),
    Cmdlet("New-Vault", "create a vault on a backend and write a credentials file valid 48 h"),
    Cmdlet("Register-Vault", "register this server with a vault (credentials file + passphrase)"),
    Cmdlet("Get-Vault", "vault location, state, usage, online RP counts"),
    Cmdlet("Set-VaultPassphrase", "change the vault passphrase (needs -SecurityPin)"),
    Cmdlet("Set-Throttling", "upload bandwidth for work and non-work hours"),
    Cmdlet("New-AgentToken", "one-time registration token for a new agent (expires)"),
    Cmdlet("Get-Agent", "list agents with online state and last backup"),
    Cmdlet("Remove-Agent", "unregister an agent"),
    Cmdlet("Get-DataSource", "list protectable and protected data sources"),
    Cmdlet("New-ProtectionGroup", "create a protection group with its disk and online policies"),
    Cmdlet("Get-ProtectionGroup", "list protection groups and their policies"),
    Cmdlet("Set-ProtectionGroup", "change a protection group's members or policies"),
    Cmdlet("Remove-ProtectionGroup", "remove a protection group"),
    Cmdlet("Start-Backup", "create a recovery point now (-DataSource|-ProtectionGroup, -Online)"),
    Cmdlet("Get-RecoveryPoint", "list recovery points (-Tier Disk|Cloud, -DataSource)"),
    Cmdlet("Get-RecoverableItem", "browse files inside a recovery point (-Path)"),
    Cmdlet("Start-Restore", "restore a whole recovery point or -Item paths"),
    Cmdlet("Get-Job", "list jobs and their progress"),
    Cmdlet("Wait-Job", "wait for a job to finish; its final state is the exit code"),
    Cmdlet("Stop-Job", "cancel a running job"),
    Cmdlet("Get-StoragePool", "pool size, stored vs logical bytes, dedup ratio, free space"),
    Cmdlet("Start-Verify", "integrity check of the storage pool or the vault"),
    Cmdlet("Start-GarbageCollection", "reclaim space in the storage pool"),
    Cmdlet("Get-Alert", "open alerts (failed or missed backups, agent offline, pool full...)"),
    Cmdlet("New-SecurityPin", "a PIN valid 5 minutes for destructive operations"),
)

_BY_LOWER_NAME: Final = {c.name.lower(): c for c in CMDLETS}

_HELP_WORDS: Final = frozenset({"help", "--help", "-help", "-h", "-?", "get-help"})
_VERSION_WORDS: Final = frozenset({"--version", "-version"})


def find_cmdlet(name: str) -> Cmdlet | None:
    """Return the cmdlet called ``name`` (case-insensitive), or None."""
    return _BY_LOWER_NAME.get(name.lower())


def _print_help(out: TextIO) -> None:
    width = max(len(c.name) for c in CMDLETS)
    out.write(f"usage: {PROG} Verb-Noun [-Parameter value ...]\n")
    out.write(f"       {PROG} help [Verb-Noun] | {PROG} -Version\n\n")
    out.write("Cmdlets (names are case-insensitive):\n")
    for cmdlet in CMDLETS:
        out.write(f"  {cmdlet.name:<{width}}  {cmdlet.summary}\n")
    out.write(
        "\nExit codes: 0 success or True, 1 False or job failed, 2 bad usage, "
        "3 server unreachable or unauthorised.\n"
    )


def _usage_error(message: str) -> int:
    sys.stderr.write(f"{PROG}: {message}\n")
    return EXIT_USAGE


def _not_available(cmdlet: Cmdlet) -> int:
    return _usage_error(f"{cmdlet.name} is not available yet in this version ({__version__})")


def _help(topics: Sequence[str]) -> int:
    if not topics:
        _print_help(sys.stdout)
        return EXIT_OK
    if len(topics) > 1:
        return _usage_error("help takes at most one cmdlet name")
    cmdlet = find_cmdlet(topics[0])
    if cmdlet is None:
        return _usage_error(f"unknown cmdlet {topics[0]!r}; run '{PROG} help' for the list")
    sys.stdout.write(f"{cmdlet.name}: {cmdlet.summary}\n")
    sys.stdout.write(f"Not available yet in this version ({__version__}).\n")
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
        _print_help(sys.stdout)
        return EXIT_OK
    first, rest = args[0], args[1:]
    if first.lower() in _VERSION_WORDS:
        sys.stdout.write(f"{PROG} {__version__}\n")
        return EXIT_OK
    if first.lower() in _HELP_WORDS:
        return _help(rest)
    cmdlet = find_cmdlet(first)
    if cmdlet is None:
        return _usage_error(f"unknown cmdlet {first!r}; run '{PROG} help' for the list")
    if any(a.lower() in {"-?", "-help", "--help"} for a in rest):
        return _help([cmdlet.name])
    return _not_available(cmdlet)
