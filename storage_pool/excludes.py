"""Exclusion patterns of a tree walk (pure, no I/O), in the spirit of restic's --exclude.

A pattern is a glob matched against each object the walk meets; an excluded directory
is not descended, so nothing below it is backed up either.

- A pattern without '/' matches the object's name (its last path component): `*.tmp`,
  `.cache`, `core.[0-9]*`. Since excluded directories are not descended, it excludes
  every object that has a matching component anywhere in its path.
- A pattern with '/' matches the object's absolute path. A leading '/' anchors it at
  the filesystem root (`/home/*/.cache`); without one it may start at any directory
  (`ann/tmp` excludes `/home/ann/tmp` and `/srv/ann/tmp`). A trailing '/' is ignored.
- `*` matches within one component, never across '/'; `?` matches one character but
  '/'; `[abc]`, `[a-z]` and `[!abc]` are character classes; a `**` component matches
  any number of components, none included (`/var/**/cache` matches `/var/cache` and
  `/var/lib/apt/cache`).
Paths are matched as text decoded with the filesystem encoding (undecodable bytes as
surrogate escapes, like os.fsdecode), case-sensitively.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence


def _component(glob: str) -> str:
    """Regex for one path component of a glob."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        i += 1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i
            if j < n and glob[j] == "!":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal '['
                out.append(re.escape(c))
                continue
            body = glob[i:j].replace("\\", "\\\\")
            i = j + 1
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            out.append(f"(?!/)[{body}]")
        else:
            out.append(re.escape(c))
    return "".join(out)


def compile_pattern(pattern: str) -> tuple[bool, re.Pattern[str]]:
    """(matches the full path?, regex) for one pattern; ValueError for an empty one."""
    comps = [c for c in pattern.split("/") if c]
    if not comps:
        raise ValueError(f"exclude pattern {pattern!r} is empty")
    if "/" not in pattern.rstrip("/"):
        return False, re.compile(_component(comps[0]) if comps[0] != "**" else ".*", re.S)
    regex = "/" if pattern.startswith("/") else "(?:.*/)?"
    for i, comp in enumerate(comps):
        last = i == len(comps) - 1
        if comp == "**":
            regex += ".*" if last else "(?:.*/)?"
        else:
            regex += _component(comp) + ("" if last else "/")
    return True, re.compile(regex, re.S)


class Excludes:
    """A compiled set of patterns; `match(full_path)` says whether to skip the object."""

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        self.patterns = tuple(patterns)
        compiled = [compile_pattern(p) for p in self.patterns]
        names = [rx.pattern for full, rx in compiled if not full]
        paths = [rx.pattern for full, rx in compiled if full]
        # One alternation per kind: one regex call per object, however many patterns.
        self._name = re.compile("|".join(f"(?:{p})" for p in names), re.S) if names else None
        self._path = re.compile("|".join(f"(?:{p})" for p in paths), re.S) if paths else None

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match(self, full: bytes) -> bool:
        """Whether the object at absolute path `full` is excluded."""
        if self._name is not None:
            name = os.fsdecode(full.rsplit(b"/", 1)[-1])
            if self._name.fullmatch(name):
                return True
        if self._path is not None:
            return self._path.fullmatch(os.fsdecode(full)) is not None
        return False
