"""``stockade help`` (every cmdlet, one line each) and ``stockade help Verb-Noun`` (detail)."""

from typing import Final, TextIO

from server import __version__
from server.cli.args import COMMON_PARAMS, Kind, Param
from server.cli.catalog import CMDLETS
from server.cli.cmdlet import Cmdlet

__all__ = ["PROG", "print_cmdlet_help", "print_overview"]

PROG: Final = "stockade"


def print_overview(out: TextIO) -> None:
    width = max(len(c.name) for c in CMDLETS)
    out.write(f"usage: {PROG} Verb-Noun [-Parameter value ...]\n")
    out.write(f"       {PROG} help [Verb-Noun] | {PROG} -Version\n\n")
    out.write("Cmdlets (names are case-insensitive; * = not available yet):\n")
    for cmdlet in CMDLETS:
        mark = "" if cmdlet.available else "* "
        out.write(f"  {cmdlet.name:<{width}}  {mark}{cmdlet.summary}\n")
    out.write(
        "\nEvery cmdlet takes -Json, -Server URL, -Token TOKEN and -CaFile PEM "
        "(else STOCKADE_SERVER, STOCKADE_TOKEN, STOCKADE_CA_FILE, else the CLI config).\n"
        "Exit codes: 0 success or True, 1 False or job failed, 2 bad usage, "
        "3 server unreachable or unauthorised.\n"
    )


def _usage_of(param: Param) -> str:
    if param.kind is Kind.SWITCH:
        return param.flag
    if param.choices:
        return f"{param.flag} {'|'.join(param.choices)}"
    value = {Kind.INT: "<int>", Kind.FLOAT: "<seconds>", Kind.LIST: "<a,b,...>"}.get(
        param.kind, "<string>"
    )
    return f"{param.flag} {value}"


def _param_lines(params: tuple[Param, ...], positional: str | None) -> str:
    width = max(len(_usage_of(p)) for p in params)
    lines = []
    for param in params:
        notes = [n for n in ("required" if param.required else "",) if n]
        if param.name == positional:
            notes.append("positional")
        suffix = f" ({', '.join(notes)})" if notes else ""
        lines.append(f"  {_usage_of(param):<{width}}  {param.help}{suffix}\n")
    return "".join(lines)


def print_cmdlet_help(cmdlet: Cmdlet, out: TextIO) -> None:
    out.write(f"{cmdlet.name}: {cmdlet.summary}\n")
    if not cmdlet.available:
        out.write(f"Not available yet in this version ({__version__}).\n")
        return
    usage = " ".join(_usage_of(p) if p.required else f"[{_usage_of(p)}]" for p in cmdlet.params)
    out.write(f"\nusage: {PROG} {cmdlet.name} {usage} [-Json]".rstrip() + "\n")
    if cmdlet.description:
        out.write(f"\n{cmdlet.description}\n")
    if cmdlet.params:
        out.write("\nParameters:\n" + _param_lines(cmdlet.params, cmdlet.positional))
    out.write("\nCommon parameters:\n" + _param_lines(COMMON_PARAMS, None))
    if cmdlet.examples:
        out.write("\nExamples:\n" + "".join(f"  {e}\n" for e in cmdlet.examples))
