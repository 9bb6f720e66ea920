"""Where a vault passphrase comes from, without putting it on the command line.

In this order, the first that is present wins:

1. ``-Passphrase P``: still accepted, but any user of the host sees it in ``ps`` and
   ``/proc/PID/cmdline`` while the CLI runs (and the shell may keep it in its history);
2. ``-PassphraseFile F``: the first line of F (without its line ending). F must not be
   readable or writable by group or others (``chmod 600 F``), as ssh demands of its keys;
   a systemd credential (``$CREDENTIALS_DIRECTORY/...``) qualifies;
3. the environment variable ``STOCKADE_VAULT_PASSPHRASE`` (a non-empty value);
4. on an interactive terminal, a prompt without echo (getpass), asked twice: a mistyped
   passphrase for a new vault would lock its data away for good.

-Passphrase and -PassphraseFile together are refused. With none of them and no terminal,
`passphrase_from` answers None and the cmdlet says what to give.
"""

import getpass
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from server.cli.args import Param
from server.cli.cmdlet import Invocation
from server.cli.errors import UsageError

__all__ = [
    "PASSPHRASE_ENV",
    "PASSPHRASE_FILE_PARAM",
    "PASSPHRASE_SOURCES",
    "Terminal",
    "passphrase_from",
    "read_passphrase_file",
]

PASSPHRASE_ENV: Final = "STOCKADE_VAULT_PASSPHRASE"
_MAX_FILE_BYTES: Final = 4096
PASSPHRASE_FILE_PARAM: Final = Param(
    "PassphraseFile",
    help="read the passphrase from the first line of this file (mode 0600 or stricter)",
)
PASSPHRASE_SOURCES: Final = (
    f"-PassphraseFile FILE, the environment variable {PASSPHRASE_ENV}, a terminal to be"
    " asked on, or -Passphrase (visible to other users in ps)"
)


@dataclass(frozen=True, slots=True)
class Terminal:
    """The prompt: whether stdin is an interactive terminal, and a no-echo question."""

    interactive: Callable[[], bool]
    ask: Callable[[str], str]


def _stdin_is_tty() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


STDIN_TERMINAL: Final = Terminal(_stdin_is_tty, getpass.getpass)


def read_passphrase_file(path: Path) -> str:
    """The first line of `path`, refused when others may read or change the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise UsageError(f"cannot read passphrase file {path}: {err.strerror}") from err
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"passphrase file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise UsageError(
                f"passphrase file {path} is accessible by group or others (mode"
                f" {stat.S_IMODE(info.st_mode):04o}); restrict it with: chmod 600 {path}"
            )
        raw = handle.read(_MAX_FILE_BYTES + 1)
    first = raw.split(b"\n", 1)[0].removesuffix(b"\r")
    if len(first) > _MAX_FILE_BYTES:
        raise UsageError(f"the first line of passphrase file {path} is too long")
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"passphrase file {path} is not UTF-8 text") from err
    if not text:
        raise UsageError(f"the first line of passphrase file {path} is empty")
    return text


def _prompt(terminal: Terminal, what: str) -> str:
    first = terminal.ask(f"{what}: ")
    if not first:
        raise UsageError(f"no {what} entered")
    if terminal.ask(f"{what} again: ") != first:
        raise UsageError(f"the two {what} entries differ; nothing was changed")
    return first


def passphrase_from(
    inv: Invocation,
    what: str = "vault passphrase",
    *,
    terminal: Terminal = STDIN_TERMINAL,
) -> str | None:
    """The passphrase from the first source present (module docstring), or None."""
    given = inv.args.text("Passphrase")
    file_text = inv.args.text("PassphraseFile")
    if given is not None and file_text is not None:
        raise UsageError("give -Passphrase or -PassphraseFile, not both")
    if given is not None:
        return given
    if file_text is not None:
        return read_passphrase_file(Path(file_text))
    from_env = inv.environ.get(PASSPHRASE_ENV)
    if from_env:
        return from_env
    if terminal.interactive():
        return _prompt(terminal, what)
    return None
