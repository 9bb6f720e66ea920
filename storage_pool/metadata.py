"""Reading a filesystem object's metadata into a manifest Entry (no file content)."""

from __future__ import annotations

import errno
import os
import stat

from storage_pool.manifest import Entry, EntryType

_TYPES = {
    stat.S_IFREG: EntryType.FILE,
    stat.S_IFDIR: EntryType.DIR,
    stat.S_IFLNK: EntryType.SYMLINK,
    stat.S_IFCHR: EntryType.CHAR_DEVICE,
    stat.S_IFBLK: EntryType.BLOCK_DEVICE,
    stat.S_IFIFO: EntryType.FIFO,
    stat.S_IFSOCK: EntryType.SOCKET,
}


def entry_type(st: os.stat_result) -> EntryType | None:
    return _TYPES.get(stat.S_IFMT(st.st_mode))


def read_xattrs(path: bytes) -> tuple[tuple[bytes, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EPERM):
            return ()
        raise
    out = []
    for name in sorted(names):
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as err:
            if err.errno == errno.ENODATA:  # removed since listed
                continue
            raise
        out.append((os.fsencode(name), value))
    return tuple(out)


def entry_from_stat(rel: bytes, full: bytes, st: os.stat_result, etype: EntryType) -> Entry:
    return Entry(
        path=rel,
        type=etype,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        atime_ns=st.st_atime_ns,
        size=st.st_size if etype is EntryType.FILE else 0,
        link_target=os.readlink(full) if etype is EntryType.SYMLINK else None,
        xattrs=read_xattrs(full),
        rdev=st.st_rdev if etype in (EntryType.CHAR_DEVICE, EntryType.BLOCK_DEVICE) else 0,
        inode=st.st_ino,
    )


def find_holes(fd: int, size: int) -> tuple[tuple[int, int], ...]:
    """(offset, length) of the holes of an open file, by SEEK_HOLE/SEEK_DATA."""
    holes: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
            if hole >= size:
                break
            try:
                data = os.lseek(fd, hole, os.SEEK_DATA)
            except OSError as err:
                if err.errno != errno.ENXIO:  # ENXIO: the hole runs to the end
                    raise
                data = size
            holes.append((hole, min(data, size) - hole))
            pos = data
    except OSError as err:
        if err.errno in (errno.EINVAL, errno.ENOTSUP):  # filesystem without hole support
            return ()
        raise
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
    return tuple(holes)
