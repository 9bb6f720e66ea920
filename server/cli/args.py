"""PowerShell-style parameter parsing for one cmdlet: ``-Name value``, ``--name value``, switches.

Pure and I/O-free. Rules (CLI.md):

* A parameter token is ``-Name`` or ``--name``, matched case-insensitively with dashes and
  underscores ignored, so ``-DataSource``, ``-datasource`` and ``--data-source`` are one
  parameter. ``-Name:value`` and ``--name=value`` carry the value inline (PowerShell's
  ``-Wait:$false`` works for switches).
* A value-taking parameter takes the next token as its value, even when it starts with a
  dash (``-Path -odd-dir``), unless that token names one of the cmdlet's parameters: then
  the value is missing, which is a usage error rather than a silently swallowed switch.
* A list parameter accepts ``a,b`` and repeats (``-Path a -Path b``); ``\\,`` is a literal
  comma inside one item.
* A cmdlet may name one positional parameter (``Wait-Job 42`` = ``Wait-Job -Id 42``).
* Unknown parameters are usage errors with a "did you mean" from :mod:`difflib`.
"""

import difflib
import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from server.cli.errors import UsageError

__all__ = [
    "COMMON_PARAMS",
    "Kind",
    "Param",
    "ParsedArgs",
    "normalise",
    "parse",
    "split_list",
]


class Kind(enum.Enum):
    """How a parameter's value is read."""

    STRING = "string"
    INT = "int"
    FLOAT = "float"
    LIST = "list"
    SWITCH = "switch"


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of a cmdlet, named the PowerShell way (``DataSource``)."""

    name: str
    kind: Kind = Kind.STRING
    help: str = ""
    required: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None

    @property
    def flag(self) -> str:
        return f"-{self.name}"


# Accepted by every cmdlet (the brief: -Json, -Server, -Token, -CaFile everywhere).
COMMON_PARAMS: Final[tuple[Param, ...]] = (
    Param("Json", Kind.SWITCH, "print only JSON on stdout (a list for Get-*)"),
    Param("Server", help="server URL, e.g. https://backup01:8443 (else STOCKADE_SERVER)"),
    Param("Token", help="operator token (else STOCKADE_TOKEN)"),
    Param("CaFile", help="PEM file of the server's CA (else STOCKADE_CA_FILE)"),
)

_PARAM_TOKEN: Final = re.compile(r"^--?([A-Za-z][A-Za-z0-9_-]*)(?:[:=](.*))?$", re.DOTALL)
_TRUE: Final = frozenset({"true", "$true", "1", "yes"})
_FALSE: Final = frozenset({"false", "$false", "0", "no"})

Value = str | int | float | bool | list[str]


def normalise(name: str) -> str:
    """The comparison key of a parameter name: lower case without dashes or underscores."""
    return name.lower().replace("-", "").replace("_", "")


def split_list(raw: str) -> list[str]:
    """Split ``a,b`` into items; ``\\,`` is a literal comma; empty items are dropped."""
    items: list[str] = []
    current: list[str] = []
    chars = iter(raw)
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            current.append("," if following == "," else char + following)
        elif char == ",":
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return [item for item in items if item]


@dataclass(slots=True)
class ParsedArgs:
    """Parameter values keyed by canonical name; absent parameters are simply missing."""

    cmdlet: str
    values: dict[str, Value] = field(default_factory=dict)

    def text(self, name: str) -> str | None:
        value = self.values.get(name)
        return value if isinstance(value, str) else None

    def items(self, name: str) -> list[str]:
        value = self.values.get(name)
        return list(value) if isinstance(value, list) else []

    def switch(self, name: str) -> bool:
        return self.values.get(name) is True

    def integer(self, name: str) -> int | None:
        value = self.values.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def number(self, name: str) -> float | None:
        value = self.values.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)

    def given(self, name: str) -> bool:
        return name in self.values


def _did_you_mean(word: str, params: Iterable[Param]) -> str:
    by_key = {normalise(p.name): p for p in params}
    close = difflib.get_close_matches(normalise(word), list(by_key), n=1, cutoff=0.6)
    return f"; did you mean {by_key[close[0]].flag}?" if close else ""


def _convert(cmdlet: str, param: Param, raw: str) -> Value:
    where = f"{cmdlet} {param.flag}"
    if param.kind is Kind.SWITCH:
        lowered = raw.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise UsageError(f"{where} is a switch; {raw!r} is not $true or $false")
    if param.kind is Kind.LIST:
        return split_list(raw)
    if param.choices:
        for choice in param.choices:
            if raw.lower() == choice.lower():
                return choice
        raise UsageError(f"{where} must be one of {', '.join(param.choices)}, not {raw!r}")
    if param.kind is Kind.STRING:
        return raw
    try:
        number: int | float = int(raw) if param.kind is Kind.INT else float(raw)
    except ValueError as err:
        kind = "an integer" if param.kind is Kind.INT else "a number"
        raise UsageError(f"{where} needs {kind}, not {raw!r}") from err
    if param.minimum is not None and number < param.minimum:
        raise UsageError(f"{where} must be at least {param.minimum:g}, not {raw}")
    return number


def _store(args: ParsedArgs, param: Param, value: Value) -> None:
    if param.kind is Kind.LIST:
        assert isinstance(value, list)
        args.values.setdefault(param.name, [])
        existing = args.values[param.name]
        assert isinstance(existing, list)
        existing.extend(value)
        return
    if param.kind is not Kind.SWITCH and param.name in args.values:
        raise UsageError(f"{args.cmdlet} {param.flag} given twice")
    args.values[param.name] = value


def parse(
    cmdlet: str,
    params: Sequence[Param],
    argv: Sequence[str],
    *,
    positional: str | None = None,
) -> ParsedArgs:
    """Parse ``argv`` (the tokens after the cmdlet name) against ``params`` + common ones.

    Raises :class:`UsageError` naming the cmdlet and the parameter on any problem.
    """
    every = (*params, *COMMON_PARAMS)
    by_key = {normalise(p.name): p for p in every}
    args = ParsedArgs(cmdlet)
    index = 0
    while index < len(argv):
        token = argv[index]
        index += 1
        match = _PARAM_TOKEN.match(token)
        if match is None:
            if positional is None or positional in args.values:
                raise UsageError(f"{cmdlet}: unexpected argument {token!r}")
            param = next(p for p in every if p.name == positional)
            _store(args, param, _convert(cmdlet, param, token))
            continue
        name, inline = match.group(1), match.group(2)
        found = by_key.get(normalise(name))
        if found is None:
            raise UsageError(
                f"{cmdlet}: unknown parameter {token.split(':')[0].split('=')[0]}"
                f"{_did_you_mean(name, every)}"
            )
        if inline is not None:
            _store(args, found, _convert(cmdlet, found, inline))
        elif found.kind is Kind.SWITCH:
            _store(args, found, True)
        else:
            following = argv[index] if index < len(argv) else None
            following_match = _PARAM_TOKEN.match(following) if following is not None else None
            if following is None or (
                following_match is not None and normalise(following_match.group(1)) in by_key
            ):
                raise UsageError(f"{cmdlet} {found.flag} needs a value")
            index += 1
            _store(args, found, _convert(cmdlet, found, following))
    for param in params:
        if param.required and args.values.get(param.name) in (None, "", []):
            raise UsageError(f"{cmdlet} needs {param.flag}")
    return args
