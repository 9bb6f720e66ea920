"""Writing objects into the restore target, each by one name under a directory descriptor.

Built on the walk (restore_walk.py), which provides the open parent directory of each
entry without following any symlink. Write order:
- a regular file is written to `.stockade-tmp-<random>` in its final directory (created
  O_EXCL|O_NOFOLLOW, mode 0600) with holes skipped by offset and the size set by
  ftruncate; its metadata is applied through its descriptor, it is fsynced, then renamed
  onto its name (in overwrite mode that replaces an existing non-directory atomically);
- symlinks, fifos, devices and hardlinks are likewise made under a temp name, given their
  metadata and renamed into place. A hardlink's source is the inode this restore wrote
  for its group (checked by device and inode number), reached again through the walk.

Conflicts (RestoreOptions.conflict) are decided per name: "skip" leaves the name alone,
"rename" picks the first free `restored_name()`, "overwrite" replaces anything but a
directory. The check and the rename are not one atomic step: a name created by someone
else in between is replaced (overwrite) like one that was there before.

All methods run on the one writer thread. Per-entry problems become warnings in
`self.report`; `abort()` removes the temp file of a cancelled restore and closes every
descriptor.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass

from agent.restore_meta import apply_to_fd, apply_to_special, apply_to_symlink
from agent.restore_plan import Planned, Step, data_ranges
from agent.restore_types import RestoreOptions
from agent.restore_walk import DirWalk, EntryFailedError, Frame, RefusedError, show, why
from storage_pool import EntryType

TMP_PREFIX = b".stockade-tmp-"
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(slots=True)
class FileWrite:
    """A regular file being written under its temp name."""

    planned: Planned
    dir_fd: int
    disk_dir: tuple[bytes, ...]
    tmp: bytes
    final: bytes
    fd: int
    written: int = 0


@dataclass(frozen=True, slots=True)
class _LinkSource:
    disk: tuple[bytes, ...]
    dev: int
    ino: int


class TargetTree(DirWalk):
    """Regular files, symlinks, special files and hardlinks, on top of the walk."""

    def __init__(self, root_fd: int, options: RestoreOptions) -> None:
        super().__init__(root_fd, options)
        self._links: dict[int, _LinkSource] = {}
        self.current: FileWrite | None = None

    @classmethod
    def open(cls, options: RestoreOptions) -> TargetTree:
        """Open (creating it if missing) the target root; the operator's path to it may
        go through symlinks, everything below it may not."""
        root = options.target_bytes()
        os.makedirs(root, exist_ok=True)
        return cls(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), options)

    def _final_name(self, frame: Frame, planned: Planned) -> bytes | None:
        """The name a non-directory is restored under, or None (skipped or reported)."""
        assert frame.fd is not None
        name = planned.parts[-1]
        st = self._lstat(frame.fd, name)
        if st is None:
            return name
        if self._conflict == "skip":
            self.report.skipped += 1
            return None
        if self._conflict == "rename":
            renamed = self._free_name(frame.fd, name)
            self.report.renamed += 1
            return renamed
        if stat.S_ISDIR(st.st_mode):
            self._warn(planned.entry.path, "a directory stands at its name; not replaced")
            return None
        return name

    @staticmethod
    def _tmp_name() -> bytes:
        return TMP_PREFIX + secrets.token_hex(8).encode()

    # ------------------------------------------------------------------ steps but regular files

    def put(self, planned: Planned) -> None:
        """Restore one non-regular-file step."""
        try:
            if planned.step is Step.DIR:
                self._put_dir_or_block(planned)
            elif planned.step is Step.SYMLINK:
                self._put_symlink(planned)
            elif planned.step is Step.SPECIAL:
                self._put_special(planned)
            elif planned.step is Step.LINK:
                self._put_link(planned)
            else:
                raise EntryFailedError(f"internal: {planned.step} is not written by put()")
        except RefusedError as err:
            self._warn(planned.entry.path, str(err), refused=True)
        except EntryFailedError as err:
            self._warn(planned.entry.path, str(err))
        except OSError as err:
            self._warn(planned.entry.path, f"cannot restore: {why(err)}")

    # ------------------------------------------------------------------ other objects

    def _place(
        self,
        planned: Planned,
        create: Callable[[int, bytes], None],
        meta: Callable[[int, bytes], list[str]],
    ) -> bool:
        """Create an object under a temp name, apply its metadata, rename it into place."""
        frame = self._parent(planned)
        if frame is None or frame.fd is None:
            return False
        final = self._final_name(frame, planned)
        if final is None:
            return False
        tmp = self._tmp_name()
        created = False
        try:
            create(frame.fd, tmp)
            created = True
            problems = meta(frame.fd, tmp)
            os.rename(tmp, final, src_dir_fd=frame.fd, dst_dir_fd=frame.fd)
        except OSError:
            if created:
                self._unlink_quietly(frame.fd, tmp)
            raise
        # rename() does nothing when both names are links of one inode: drop the temp.
        self._unlink_quietly(frame.fd, tmp)
        self._notes(planned.entry.path, problems)
        return True

    def _put_symlink(self, planned: Planned) -> None:
        entry = planned.entry
        target = entry.link_target
        assert target is not None  # the planner refuses symlinks without one

        def create(dir_fd: int, name: bytes) -> None:
            os.symlink(target, name, dir_fd=dir_fd)  # data: never followed by us

        def meta(dir_fd: int, name: bytes) -> list[str]:
            return apply_to_symlink(dir_fd, name, entry, owner=self._owner)

        if self._place(planned, create, meta):
            self.report.symlinks += 1

    def _put_special(self, planned: Planned) -> None:
        entry = planned.entry
        kind = {
            EntryType.FIFO: stat.S_IFIFO,
            EntryType.CHAR_DEVICE: stat.S_IFCHR,
            EntryType.BLOCK_DEVICE: stat.S_IFBLK,
        }[entry.type]

        def create(dir_fd: int, name: bytes) -> None:
            if kind == stat.S_IFIFO:
                os.mkfifo(name, 0o600, dir_fd=dir_fd)
            else:
                os.mknod(name, 0o600 | kind, entry.rdev, dir_fd=dir_fd)

        def meta(dir_fd: int, name: bytes) -> list[str]:
            return apply_to_special(dir_fd, name, entry, owner=self._owner)

        if self._place(planned, create, meta):
            self.report.specials += 1

    def _put_link(self, planned: Planned) -> None:
        assert planned.group is not None
        source = self._links.get(planned.group)
        if source is None:
            raise EntryFailedError(
                "hardlink not restored: the first link of its group was not restored here"
            )
        try:
            src_fd, close = self._open_disk_dir(source.disk[:-1])
        except RefusedError as err:
            self._warn(planned.entry.path, f"hardlink source: {err}", refused=True)
            return
        try:
            st = self._lstat(src_fd, source.disk[-1])
            if st is None or (st.st_dev, st.st_ino) != (source.dev, source.ino):
                raise EntryFailedError(
                    f"hardlink source {show(source.disk)} changed since it was restored"
                )

            def create(dir_fd: int, name: bytes) -> None:
                os.link(
                    source.disk[-1],
                    name,
                    src_dir_fd=src_fd,
                    dst_dir_fd=dir_fd,
                    follow_symlinks=False,
                )

            if self._place(planned, create, lambda _fd, _name: []):
                self.report.hardlinks += 1
        finally:
            if close:
                os.close(src_fd)

    # ------------------------------------------------------------------ regular files

    def begin_file(self, planned: Planned) -> FileWrite | None:
        """Open the temp file of a regular file, or None when it is not restored."""
        try:
            frame = self._parent(planned)
            if frame is None or frame.fd is None:
                return None
            final = self._final_name(frame, planned)
            if final is None:
                return None
            tmp = self._tmp_name()
            fd = os.open(tmp, _NEW_FILE, 0o600, dir_fd=frame.fd)
        except EntryFailedError as err:
            self._warn(planned.entry.path, str(err))
            return None
        except OSError as err:
            self._warn(planned.entry.path, f"cannot create: {why(err)}")
            return None
        self.current = FileWrite(planned, frame.fd, frame.disk, tmp, final, fd)
        return self.current

    def write(self, fw: FileWrite, offset: int, data: bytes) -> bool:
        """Write one chunk at `offset`, skipping its parts inside holes."""
        view = memoryview(data)
        try:
            for start, end in data_ranges(offset, len(data), fw.planned.entry.holes):
                piece, pos = view[start - offset : end - offset], start
                while piece:
                    n = os.pwrite(fw.fd, piece, pos)
                    piece, pos = piece[n:], pos + n
        except OSError as err:
            self.fail_file(fw, f"cannot write: {why(err)}")
            return False
        fw.written += len(data)
        return True

    def fail_file(self, fw: FileWrite, message: str) -> None:
        self._discard(fw)
        self._warn(fw.planned.entry.path, message)

    def _discard(self, fw: FileWrite) -> None:
        if fw.fd >= 0:
            os.close(fw.fd)
            fw.fd = -1
        self._unlink_quietly(fw.dir_fd, fw.tmp)
        self.current = None

    def finish_file(self, fw: FileWrite) -> None:
        entry = fw.planned.entry
        try:
            os.ftruncate(fw.fd, entry.size)
            problems = apply_to_fd(fw.fd, entry, owner=self._owner)
            if self._durable:
                os.fsync(fw.fd)
            st = os.fstat(fw.fd)
            os.close(fw.fd)
            fw.fd = -1
            os.rename(fw.tmp, fw.final, src_dir_fd=fw.dir_fd, dst_dir_fd=fw.dir_fd)
        except OSError as err:
            self.fail_file(fw, f"cannot finish: {why(err)}")
            return
        self.current = None
        self.report.files += 1
        self.report.bytes += entry.size
        self._notes(entry.path, problems)
        if fw.planned.group is not None:
            self._links[fw.planned.group] = _LinkSource(
                (*fw.disk_dir, fw.final), st.st_dev, st.st_ino
            )

    # ------------------------------------------------------------------ end

    def abort(self) -> None:
        """Cancelled or failed: remove the temp file, close descriptors, apply nothing."""
        if self.current is not None:
            self._discard(self.current)
        self.close_all()
