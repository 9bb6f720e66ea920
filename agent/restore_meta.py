"""Applying an entry's metadata to a restored object, and naming renamed copies.

Order, per object: owner, then xattrs, then mode, then times.
- chown first: the kernel clears setuid/setgid bits and file capabilities on chown, so
  the mode (setuid etc.) and xattrs (security.capability) come after it;
- xattrs before the mode: setting a user.* xattr needs write permission, which a
  restored 0o400 file would no longer give a non-root restorer;
- times last: nothing after them touches the data (rename changes ctime only).

Every step works on a file descriptor or below a directory descriptor, never on a path
from the root, so no symlink is followed. Failures are returned as messages (the caller
reports them as warnings), never raised: a file with its data but without an xattr is
still restored.
"""

from __future__ import annotations

import errno
import os
import stat

from storage_pool import Entry

RESTORED_TAG = b".restored-"
_MAX_EXTENSION = 16  # longer suffixes are not an extension worth keeping at the end


def restored_name(name: bytes, n: int) -> bytes:
    """The name of the n-th renamed copy of `name` (rename conflict mode).

    The tag goes before the extension so the copy still opens with the same program:
    `report.pdf` -> `report.restored-1.pdf`, `archive.tar.gz` -> `archive.tar.restored-1.gz`.
    A name without an extension (or a dot file like `.bashrc`, or an extension longer than
    16 bytes) gets it at the end: `Makefile.restored-1`, `.bashrc.restored-1`.
    """
    stem, dot, ext = name.rpartition(b".")
    tag = RESTORED_TAG + str(n).encode()
    if dot and stem and ext and len(ext) <= _MAX_EXTENSION:
        return stem + tag + b"." + ext
    return name + tag


def _why(err: OSError) -> str:
    return err.strerror or str(err)


def _chown(target: int | bytes, entry: Entry, dir_fd: int | None, *, follow: bool) -> list[str]:
    try:
        os.chown(target, entry.uid, entry.gid, dir_fd=dir_fd, follow_symlinks=follow)
    except OSError as err:
        hint = " (needs root)" if err.errno == errno.EPERM and os.geteuid() != 0 else ""
        return [f"cannot set owner {entry.uid}:{entry.gid}: {_why(err)}{hint}"]
    return []


def _xattrs(target: int | bytes, entry: Entry, *, follow: bool) -> list[str]:
    problems: list[str] = []
    for name, value in entry.xattrs:
        try:
            os.setxattr(target, name, value, follow_symlinks=follow)
        except OSError as err:
            problems.append(f"cannot set xattr {os.fsdecode(name)}: {_why(err)}")
    return problems


def _utime(target: int | bytes, entry: Entry, dir_fd: int | None) -> list[str]:
    try:
        os.utime(
            target,
            ns=(entry.atime_ns, entry.mtime_ns),
            dir_fd=dir_fd,
            follow_symlinks=isinstance(target, int),
        )
    except OSError as err:
        return [f"cannot set times: {_why(err)}"]
    return []


def apply_to_fd(fd: int, entry: Entry, *, owner: bool) -> list[str]:
    """Regular files and directories: everything through their open descriptor."""
    problems = _chown(fd, entry, None, follow=True) if owner else []
    problems += _xattrs(fd, entry, follow=True)
    try:
        os.chmod(fd, stat.S_IMODE(entry.mode))
    except OSError as err:
        problems.append(f"cannot set mode {stat.S_IMODE(entry.mode):o}: {_why(err)}")
    return problems + _utime(fd, entry, None)


def apply_to_symlink(dir_fd: int, name: bytes, entry: Entry, *, owner: bool) -> list[str]:
    """A symlink is never followed; Linux has no mode on symlinks."""
    problems = _chown(name, entry, dir_fd, follow=False) if owner else []
    if entry.xattrs:
        # lsetxattr has no *at form: reach the name through our directory descriptor.
        problems += _xattrs(b"/proc/self/fd/%d/%s" % (dir_fd, name), entry, follow=False)
    return problems + _utime(name, entry, dir_fd)


def apply_to_special(dir_fd: int, name: bytes, entry: Entry, *, owner: bool) -> list[str]:
    """Fifos and devices: an O_PATH descriptor pins the object without opening the device
    (no side effects) and without following a symlink swapped in for it; the metadata
    calls reach it through /proc/self/fd."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as err:
        return [f"cannot open to set metadata: {_why(err)}"]
    try:
        st = os.fstat(fd)
        if stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
            return ["was replaced while being restored; metadata not applied"]
        # /proc/self/fd/N is a magic link to the pinned object: following it is the point.
        proc = b"/proc/self/fd/%d" % fd
        problems = _chown(proc, entry, None, follow=True) if owner else []
        problems += _xattrs(proc, entry, follow=True)
        try:
            os.chmod(proc, stat.S_IMODE(entry.mode))
        except OSError as err:
            problems.append(f"cannot set mode {stat.S_IMODE(entry.mode):o}: {_why(err)}")
        try:
            os.utime(proc, ns=(entry.atime_ns, entry.mtime_ns))
        except OSError as err:
            problems.append(f"cannot set times: {_why(err)}")
        return problems
    finally:
        os.close(fd)
