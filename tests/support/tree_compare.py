"""Comparing two directory trees, bytes and metadata, for backup/restore round trips.

    differences = compare_trees(snapshot(source), snapshot(restored))
    assert differences == []

`snapshot()` lstats every object first and reads file contents afterwards, so reading
does not move the atimes it records. Paths are bytes end to end (non-UTF-8 names work).
Hardlinks are compared by structure: every member of an inode with several links names
the smallest path of its group in `Node.link_group`.

What is compared is chosen by `Compare` (defaults suit a restore by root: owners,
mtimes in ns, user.* xattrs, hardlink structure; not atimes, which listing a directory or
reading a symlink moves, nor ctimes, which no restore can set).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, fields
from pathlib import Path

_TYPE_NAMES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
    stat.S_IFSOCK: "socket",
}


@dataclass(frozen=True, slots=True)
class Node:
    """One object of a tree, as compared."""

    kind: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    atime_ns: int
    size: int  # regular files only, else 0
    sha256: str  # regular files only, else ""
    link_target: bytes | None
    xattrs: tuple[tuple[bytes, bytes], ...]
    rdev: int
    link_group: bytes | None  # smallest path sharing this inode, when nlink > 1
    allocated: int  # st_blocks * 512 (regular files): shows sparseness


@dataclass(frozen=True, slots=True)
class Compare:
    owner: bool = True
    mtime: bool = True
    dir_mtime: bool = True
    atime: bool = False  # regular files and fifos only when on
    xattrs: bool = True
    hardlinks: bool = True


def _walk(root: bytes, rel: bytes, out: dict[bytes, os.stat_result]) -> None:
    base = os.path.join(root, rel) if rel else root
    with os.scandir(base) as it:
        names = sorted(e.name for e in it)
    for name in names:
        path = rel + b"/" + name if rel else name
        st = os.lstat(os.path.join(root, path))
        out[path] = st
        if stat.S_ISDIR(st.st_mode):
            _walk(root, path, out)


def _xattrs(full: bytes, prefixes: tuple[bytes, ...]) -> tuple[tuple[bytes, bytes], ...]:
    try:
        names = os.listxattr(full, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for name in sorted(names):
        raw = os.fsencode(name)
        if raw.startswith(prefixes):
            out.append((raw, os.getxattr(full, name, follow_symlinks=False)))
    return tuple(out)


def _sha256(full: bytes) -> str:
    digest = hashlib.sha256()
    with open(full, "rb") as f:
        while block := f.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def snapshot(
    root: Path | bytes | str,
    *,
    xattr_prefixes: tuple[bytes, ...] = (b"user.",),
    exclude: frozenset[bytes] = frozenset(),
) -> dict[bytes, Node]:
    """Every object below `root` (not `root` itself), keyed by relative path."""
    base = os.fsencode(root)
    stats: dict[bytes, os.stat_result] = {}
    _walk(base, b"", stats)
    for path in list(stats):
        if path in exclude or any(path.startswith(p + b"/") for p in exclude):
            del stats[path]
    groups: dict[tuple[int, int], bytes] = {}
    for path in sorted(stats):
        st = stats[path]
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            groups.setdefault((st.st_dev, st.st_ino), path)
    nodes: dict[bytes, Node] = {}
    for path, st in stats.items():  # after every lstat: reading moves atimes
        full = os.path.join(base, path)
        regular = stat.S_ISREG(st.st_mode)
        nodes[path] = Node(
            kind=_TYPE_NAMES.get(stat.S_IFMT(st.st_mode), "unknown"),
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            mtime_ns=st.st_mtime_ns,
            atime_ns=st.st_atime_ns,
            size=st.st_size if regular else 0,
            sha256=_sha256(full) if regular else "",
            link_target=os.readlink(full) if stat.S_ISLNK(st.st_mode) else None,
            xattrs=_xattrs(full, xattr_prefixes),
            rdev=st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0,
            link_group=groups.get((st.st_dev, st.st_ino)),
            allocated=st.st_blocks * 512 if regular else 0,
        )
    return nodes


def _skipped_fields(node: Node, how: Compare) -> set[str]:
    skip = {"allocated"}  # sparseness is checked on its own (allocation is fs-specific)
    if not how.owner:
        skip |= {"uid", "gid"}
    if not how.mtime or (node.kind == "dir" and not how.dir_mtime):
        skip.add("mtime_ns")
    if not how.atime or node.kind not in ("file", "fifo"):
        skip.add("atime_ns")
    if not how.xattrs:
        skip.add("xattrs")
    if not how.hardlinks:
        skip.add("link_group")
    if node.kind == "symlink":
        skip.add("mode")  # Linux has no symlink modes (always 0o777)
    return skip


def compare_trees(
    expected: dict[bytes, Node], actual: dict[bytes, Node], how: Compare | None = None
) -> list[str]:
    """Human-readable differences; empty when the trees match."""
    how = how or Compare()
    problems: list[str] = []
    for path in sorted(expected.keys() - actual.keys()):
        problems.append(f"{path!r}: missing")
    for path in sorted(actual.keys() - expected.keys()):
        problems.append(f"{path!r}: unexpected")
    for path in sorted(expected.keys() & actual.keys()):
        want, got = expected[path], actual[path]
        skip = _skipped_fields(want, how)
        for f in fields(Node):
            if f.name in skip:
                continue
            a, b = getattr(want, f.name), getattr(got, f.name)
            if a != b:
                shown = (f"{a:o}", f"{b:o}") if f.name == "mode" else (repr(a), repr(b))
                problems.append(f"{path!r}: {f.name} {shown[0]} != {shown[1]}")
    return problems


def assert_same_tree(
    expected_root: Path | bytes | str,
    actual_root: Path | bytes | str,
    how: Compare | None = None,
    *,
    exclude: frozenset[bytes] = frozenset(),
) -> None:
    problems = compare_trees(
        snapshot(expected_root, exclude=exclude), snapshot(actual_root, exclude=exclude), how
    )
    assert not problems, "trees differ:\n" + "\n".join(problems)


def files_named(root: Path | bytes | str, prefix: bytes) -> list[bytes]:
    """Relative paths of every object below `root` whose name starts with `prefix`."""
    base = os.fsencode(root)
    found: list[bytes] = []
    for top, dirs, files in os.walk(base):
        for name in dirs + files:
            if name.startswith(prefix):
                found.append(os.path.relpath(os.path.join(top, name), base))
    return found
