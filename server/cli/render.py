"""Human output of the CLI: byte sizes, local times, tables, key/value blocks, JSON, progress.

Pure formatting except :class:`ProgressLine`, which writes one self-overwriting line to a
terminal. Human output shows sizes in binary units (KiB, MiB...) and times in local time,
``YYYY-MM-DD HH:MM:SS``; ``-Json`` output passes the API's raw numbers through untouched.
"""

import datetime as dt
import json
import shutil
from collections.abc import Mapping, Sequence
from typing import Any, Final, TextIO

__all__ = [
    "ProgressLine",
    "format_progress",
    "human_bytes",
    "human_rate",
    "key_values",
    "local_time",
    "table",
    "write_json",
]

_UNITS: Final = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_SPINNER: Final = "|/-\\"
NONE: Final = "-"


def human_bytes(value: float | None) -> str:
    """``1536`` -> ``1.5 KiB``; None -> ``-``."""
    if value is None:
        return NONE
    size = float(value)
    for unit in _UNITS:
        if abs(size) < 1024 or unit == _UNITS[-1]:
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_rate(bytes_per_second: float | None) -> str:
    return NONE if bytes_per_second is None else f"{human_bytes(bytes_per_second)}/s"


def local_time(timestamp: float | None) -> str:
    """Unix seconds -> local ``2026-03-01 14:05:09``; None -> ``-``."""
    if timestamp is None:
        return NONE
    return dt.datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[str] = ()
) -> str:
    """A plain text table; ``right`` names the columns aligned right (numbers, sizes)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if headers[i] in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(row) for row in rows)
    return "\n".join(out) + "\n"


def key_values(pairs: Sequence[tuple[str, str]]) -> str:
    """``Name : value`` lines, the PowerShell ``Format-List`` look for one object."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "".join(f"{k:<{width}} : {v}\n" for k, v in pairs)


def write_json(out: TextIO, value: Any) -> None:
    out.write(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _shorten_left(text: str, width: int) -> str:
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    return "..." + text[-(width - 3) :] if width > 3 else text[-width:]


def format_progress(job: Mapping[str, Any], width: int, tick: int = 0) -> str:
    """One status line for a running job, at most ``width`` characters.

    The API reports no totals, so this is a live counter (files, bytes, rate) with the
    current path shortened from the left (its tail names the file), not a percentage bar.
    """
    progress = job.get("progress") or {}
    files = progress.get("files")
    head = (
        f"{_SPINNER[tick % len(_SPINNER)]} job {job.get('id')} {job.get('state')}: "
        f"{files if files is not None else 0:,} files, {human_bytes(progress.get('bytes') or 0)}, "
        f"{human_rate(progress.get('rate_bps') or 0)}"
    )
    path = progress.get("current_path") or ""
    if path and len(head) + 2 < width:
        head = f"{head}  {_shorten_left(str(path), width - len(head) - 2)}"
    return head[:width]


class ProgressLine:
    """Rewrites one line on a terminal (``\\r`` + clear); does nothing when disabled."""

    def __init__(self, stream: TextIO, *, enabled: bool) -> None:
        self._stream = stream
        self._enabled = enabled
        self._tick = 0
        self._shown = False

    def update(self, job: Mapping[str, Any]) -> None:
        if not self._enabled:
            return
        width = shutil.get_terminal_size((80, 24)).columns - 1
        self._stream.write("\r\x1b[K" + format_progress(job, width, self._tick))
        self._stream.flush()
        self._tick += 1
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False
