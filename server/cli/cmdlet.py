"""What a cmdlet is (:class:`Cmdlet`) and what it gets when it runs (:class:`Invocation`).

A cmdlet's ``run`` returns the exit code, or raises :class:`server.cli.errors.CliError`.
It writes its result to ``inv.out`` (only JSON when ``inv.json``) and notes to ``inv.err``.
The API client is built on first use, so ``help`` and usage errors never need a server.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from server.cli.args import Param, ParsedArgs
from server.cli.client import ApiClient
from server.cli.config import resolve_connection
from server.cli.render import write_json

__all__ = ["Cmdlet", "Invocation"]


@dataclass(slots=True)
class Invocation:
    """One run of one cmdlet: its parsed arguments, output streams and (lazy) API client."""

    cmdlet: str
    args: ParsedArgs
    out: TextIO
    err: TextIO
    environ: Mapping[str, str]
    _client: ApiClient | None = field(default=None, repr=False)

    @property
    def json(self) -> bool:
        return self.args.switch("Json")

    @property
    def client(self) -> ApiClient:
        if self._client is None:
            connection = resolve_connection(
                server=self.args.text("Server"),
                token=self.args.text("Token"),
                ca_file=self.args.text("CaFile"),
                environ=self.environ,
                err=self.err,
            )
            self._client = ApiClient(connection)
        return self._client

    @property
    def progress_enabled(self) -> bool:
        """A live progress line only on an interactive terminal."""
        isatty = getattr(self.err, "isatty", None)
        return bool(isatty and isatty())

    def emit_json(self, value: Any) -> None:
        write_json(self.out, value)

    def note(self, message: str) -> None:
        self.err.write(message.rstrip("\n") + "\n")


@dataclass(frozen=True, slots=True)
class Cmdlet:
    """A ``Verb-Noun`` command: name, one-line summary and, once delivered, its parameters."""

    name: str
    summary: str
    params: tuple[Param, ...] = ()
    run: Callable[[Invocation], int] | None = None
    positional: str | None = None
    description: str = ""
    examples: tuple[str, ...] = ()

    @property
    def available(self) -> bool:
        return self.run is not None
