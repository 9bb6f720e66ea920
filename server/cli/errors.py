"""Exit codes of the ``stockade`` CLI and the one exception that carries them.

Every failure a cmdlet meets ends as a :class:`CliError`; ``main`` prints its one-line
message on stderr (never stdout, so ``-Json`` output stays parseable) and exits with its
code. The codes are fixed by CLI.md:

* 0 success (or True),
* 1 a check that answered False, a job that failed or was cancelled, a request the server
  refused for the object's state (409, 422, 5xx),
* 2 bad usage or bad input (unknown cmdlet or parameter, missing value, unknown or
  ambiguous object, 400/404, a 403 with the API's reason such as a refused security PIN),
* 3 server unreachable or unauthorised (connection refused, TLS failure, timeout, 401, a
  403 without the API's reason, 503 not ready, an answer that is not the API's JSON).
"""

from typing import Final

__all__ = [
    "EXIT_FALSE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CliError",
    "UnreachableError",
    "UsageError",
]

EXIT_OK: Final = 0
EXIT_FALSE: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_INTERRUPTED: Final = 130  # Ctrl-C, the shell convention (128 + SIGINT)


class CliError(Exception):
    """A cmdlet failed; ``str(err)`` is the one-line reason, ``exit_code`` the exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FALSE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(CliError):
    """Bad usage or bad input (exit 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


class UnreachableError(CliError):
    """The server could not be reached or refused our credentials (exit 3)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_UNREACHABLE)
