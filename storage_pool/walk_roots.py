"""Which parts of a filesystem a walk covers: its roots, merged into one tree (pure).

A walk has a base directory and roots below it (or equal to it). Manifest paths are
relative to the base; a root is backed up with everything below it, and each directory
between the base and a root (an ancestor) is recorded as a directory entry of its own,
so a restore can recreate it with its metadata, but nothing else of it is read. Roots
that overlap are merged: `/a` covers `/a/b`. The base itself is never an entry (its
manifest path would be empty).

The agent backs up absolute paths with the base `/`: root `/home/ann/docs` yields the
entries `home`, `home/ann`, `home/ann/docs` and what lies below it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class RootNode:
    """One directory on the way to a root, or a root. Children only below non-roots."""

    rel: bytes  # path relative to the base, b"" for the base itself
    full: bytes  # absolute path
    is_root: bool = False
    children: dict[bytes, RootNode] = field(default_factory=dict)

    def sorted_children(self) -> list[RootNode]:
        return [self.children[name] for name in sorted(self.children)]


def absolute_roots(paths: Iterable[str | bytes | os.PathLike[str]]) -> list[bytes]:
    """Normalise user-given absolute paths for a walk with the base `/`.

    The directories above each root are resolved (symlinks followed), so every ancestor
    recorded is a real directory; the root itself is not: a root that is a symlink is
    backed up as that symlink, like any symlink met below a root.
    """
    out: list[bytes] = []
    for raw in paths:
        path = os.fsencode(raw)
        if not path.startswith(b"/"):
            raise ValueError(f"backup root {os.fsdecode(path)!r} is not an absolute path")
        if b"\0" in path:
            raise ValueError(f"backup root {os.fsdecode(path)!r} contains NUL")
        path = os.path.normpath(path)
        if path.startswith(b"//"):  # POSIX keeps a leading '//' in normpath
            path = b"/" + path.lstrip(b"/")
        if path != b"/":
            head, name = os.path.split(path)
            path = os.path.join(os.path.realpath(head), name)
        out.append(path)
    return out


def plan_roots(base: bytes, roots: Sequence[bytes]) -> RootNode:
    """The tree of `roots` (normalised absolute paths, each at or below the absolute
    `base`), overlapping roots merged."""
    if not base.startswith(b"/") or os.path.normpath(base) != base:
        raise ValueError(f"walk base {os.fsdecode(base)!r} is not a normalised absolute path")
    top = RootNode(b"", base)
    prefix = base.rstrip(b"/") + b"/"
    for root in roots:
        if os.path.normpath(root) != root:
            raise ValueError(f"backup root {os.fsdecode(root)!r} is not normalised")
        if root == base:
            parts: list[bytes] = []
        elif root.startswith(prefix):
            parts = root[len(prefix) :].split(b"/")
        else:
            raise ValueError(
                f"backup root {os.fsdecode(root)!r} is not below {os.fsdecode(base)!r}"
            )
        node = top
        for part in parts:
            if node.is_root:
                break  # an earlier root already covers this one
            child = node.children.get(part)
            if child is None:
                rel = node.rel + b"/" + part if node.rel else part
                child = node.children[part] = RootNode(rel, os.path.join(node.full, part))
            node = child
        else:
            node.is_root = True
            node.children.clear()  # the roots below it are covered by it
    return top
