"""A tree with every kind of object the restorer handles, with chosen metadata."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from tests.unit.pool.sample_data import KiB, MiB, random_bytes, text_bytes

SPARSE_SIZE = 10 * MiB
ODD_NAME = b"caf\xe9"  # Latin-1, not UTF-8
SPACED_NAME = b"two  words\nand a newline .txt"
BASE_NS = 1_600_000_000_123_456_789
OWNER = (1234, 5678)  # applied only when the tests run as root


def _p(root: Path, rel: bytes) -> bytes:
    return os.fsencode(root) + b"/" + rel


def _write(root: Path, rel: bytes, data: bytes, mode: int = 0o644) -> None:
    with open(_p(root, rel), "wb") as f:
        f.write(data)
    os.chmod(_p(root, rel), mode)


def build_rich_tree(root: Path) -> bool:
    """Fill `root`; returns whether the filesystem took user.* xattrs."""
    for d in (b"sub", b"sub/deeper", b"sub/deeper/deepest", b"shared", b"sub/" + ODD_NAME):
        os.mkdir(_p(root, d))
    _write(root, b"regular.txt", text_bytes(300 * KiB, seed=1), 0o640)
    _write(root, b"random.bin", random_bytes(3 * MiB, seed=2))
    _write(root, b"empty", b"")
    _write(root, b"setuid", b"#!/bin/sh\n", 0o4755)
    _write(root, b"private", b"secret", 0o600)
    _write(root, ODD_NAME, b"odd name")
    _write(root, SPACED_NAME, b"spaces and a newline")
    _write(root, b"sub/" + ODD_NAME + b"/inner", b"inside a non-UTF-8 dir")
    _write(root, b"sub/deeper/deepest/leaf", b"leaf")
    _write(root, b"sub/deeper/notes.md", text_bytes(10 * KiB, seed=4))
    with open(_p(root, b"sparse"), "wb") as f:
        f.write(random_bytes(4 * KiB, seed=5))
        f.seek(5 * MiB)
        f.write(random_bytes(64 * KiB, seed=6))
        f.truncate(SPARSE_SIZE)
    _write(root, b"hl_a", random_bytes(600 * KiB, seed=3))
    os.link(_p(root, b"hl_a"), _p(root, b"sub/hl_b"))
    os.link(_p(root, b"hl_a"), _p(root, b"sub/deeper/hl_c"))
    os.symlink(b"regular.txt", _p(root, b"link"))
    os.symlink(b"../nowhere/at all", _p(root, b"sub/dangling"))
    os.symlink(b"/etc/passwd", _p(root, b"sub/absolute"))
    os.mkfifo(_p(root, b"pipe"), 0o620)
    xattrs = True
    try:
        os.setxattr(_p(root, b"regular.txt"), b"user.k", b"v")
        os.setxattr(_p(root, b"sub/deeper"), b"user.dir", b"\x00\xff binary")
    except OSError as err:
        if err.errno != errno.ENOTSUP:
            raise
        xattrs = False
    if os.geteuid() == 0:
        os.chown(_p(root, b"private"), *OWNER)
        os.chown(_p(root, b"sub/deeper"), *OWNER)
        os.lchown(_p(root, b"link"), *OWNER)
        os.chmod(_p(root, b"setuid"), 0o4755)  # chown cleared it
    os.chmod(_p(root, b"shared"), 0o1777)
    os.chmod(_p(root, b"sub/deeper"), 0o750)
    set_times(root)
    return xattrs


def set_times(root: Path) -> None:
    """Distinct ns-precise times on everything, children before their directories."""
    base = os.fsencode(root)
    paths: list[bytes] = []
    for top, dirs, files in os.walk(base):
        paths += [os.path.join(top, n) for n in dirs + files]
    for i, full in enumerate(sorted(paths, key=lambda p: -p.count(b"/"))):
        ns = BASE_NS + i * 1_000_003
        os.utime(full, ns=(ns - 7, ns), follow_symlinks=False)
