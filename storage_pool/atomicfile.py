"""Durable file writes: temp file, fsync, rename, directory fsync.

Every file the pool creates goes through here so that a crash leaves either the old
state or the new one, never a torn file under its final name.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import secrets
from pathlib import Path

TMP_MARK = ".tmp-"
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(final: Path) -> Path:
    return final.with_name(f"{final.name}{TMP_MARK}{secrets.token_hex(6)}")


def syncfs(path: Path | str) -> None:
    """Flush every dirty page and inode of the filesystem holding `path` (one device flush
    for many files, where an fsync per file would pay one each)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def write_durable_tmp(final: Path, data: bytes | memoryview, *, fsync: bool = True) -> Path:
    """Write `data` to a fresh temp file beside `final` (fsynced unless told not to: the
    caller then owes a syncfs before anything relies on it); return its path."""
    tmp = tmp_name(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def write_atomic(final: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Replace `final` with `data` atomically and durably."""
    tmp = write_durable_tmp(final, data)
    try:
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(final.parent)


def make_dir_durable(path: Path) -> None:
    """Create `path` (and parents) if needed, fsyncing each parent that gained an entry."""
    if path.is_dir():
        return
    make_dir_durable(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return
    fsync_dir(path.parent)
