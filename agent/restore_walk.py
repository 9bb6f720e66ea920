"""Walking the restore target by directory descriptors: the security core of a restore.

The walk holds a descriptor of the target root and a stack of descriptors of the
directories on the way to the current entry (the manifest is depth-first, so the stack
only grows by one child or unwinds). Each component is opened with
O_DIRECTORY|O_NOFOLLOW relative to its parent's descriptor, so a symlink standing where a
directory should be (made earlier by the same manifest, or already on disk) is refused,
never followed, and callers create objects by a single name under a directory
descriptor: nothing is ever written outside the target.

A directory is made with mode 0700 while its contents are written; its recorded metadata
is applied, and it is fsynced (making the renames in it durable), when the walk leaves it
(post-order), because writing children changes a directory's mtime. An existing
directory is merged into and gets the entry's metadata only in overwrite mode;
directories above a selected item (`implicit`) are created when missing and otherwise
left alone. A directory that cannot be restored stays on the stack as a dead frame, so
the entries below it say why (or count as skipped) instead of recreating it.

Runs on the restore's one writer thread, like everything that touches the target.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass

from agent.restore_meta import apply_to_fd, restored_name
from agent.restore_plan import Planned
from agent.restore_types import ConflictMode, RestoreOptions, RestoreReport
from storage_pool import Entry

MAX_RENAMES = 1000
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class RefusedError(Exception):
    """A security refusal: following this path would leave the target."""


class EntryFailedError(Exception):
    """This entry cannot be restored (its message says why)."""


def why(err: OSError) -> str:
    return err.strerror or str(err)


def show(parts: tuple[bytes, ...]) -> str:
    return repr(os.fsdecode(b"/".join(parts)))


@dataclass(slots=True)
class Frame:
    """A directory on the current path. `fd` None: not restored, `dead` says why."""

    parts: tuple[bytes, ...]
    fd: int | None
    disk: tuple[bytes, ...]  # on-disk components below the target (renames differ)
    entry: Entry | None = None  # metadata to apply when the walk leaves it
    dead: str = ""
    dead_skip: bool = False  # skipped by conflict mode: entries below count as skipped
    dead_refused: bool = False


class DirWalk:
    def __init__(self, root_fd: int, options: RestoreOptions) -> None:
        self.report = RestoreReport()
        self._stack = [Frame((), root_fd, ())]
        self._conflict: ConflictMode = options.conflict
        self._owner = options.preserve_owner
        self._durable = options.durable

    def _warn(
        self, path: bytes, message: str, *, refused: bool = False, failed: bool = True
    ) -> None:
        self.report.warn(path, message, refused=refused, failed=failed)

    def _notes(self, path: bytes, problems: list[str]) -> None:
        for problem in problems:
            self._warn(path, problem, failed=False)

    def _leave(self, frame: Frame) -> None:
        if frame.fd is None:
            return
        path = b"/".join(frame.parts)
        try:
            if frame.entry is not None:
                self._notes(path, apply_to_fd(frame.fd, frame.entry, owner=self._owner))
            if self._durable:
                os.fsync(frame.fd)
        except OSError as err:
            self._warn(path, f"cannot finish directory: {why(err)}", failed=False)
        finally:
            os.close(frame.fd)

    def _open_dir(self, dir_fd: int, name: bytes, disk: tuple[bytes, ...]) -> int:
        try:
            return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        except OSError as err:
            if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = self._lstat(dir_fd, name)
            if st is None or stat.S_ISLNK(st.st_mode):
                raise RefusedError(
                    f"{show(disk)} is a symlink in the target; not followed"
                ) from err
            raise EntryFailedError(f"{show(disk)} is not a directory in the target") from err

    def _descend(self, parts: tuple[bytes, ...]) -> Frame:
        """Make the stack end at the directory `parts`, creating missing ones."""
        stack = self._stack
        while len(stack) > 1 and stack[-1].parts != parts[: len(stack[-1].parts)]:
            self._leave(stack.pop())
        while len(stack[-1].parts) < len(parts):
            top = stack[-1]
            name = parts[len(top.parts)]
            disk = (*top.disk, name)
            if top.fd is None:
                stack.append(
                    Frame(
                        (*top.parts, name),
                        None,
                        disk,
                        dead=top.dead,
                        dead_skip=top.dead_skip,
                        dead_refused=top.dead_refused,
                    )
                )
                continue
            try:
                fd = self._open_dir(top.fd, name, disk)
            except FileNotFoundError:  # not in the manifest (or not selected): like mkdir -p
                os.mkdir(name, 0o777, dir_fd=top.fd)
                fd = self._open_dir(top.fd, name, disk)
            stack.append(Frame((*top.parts, name), fd, disk))
        return stack[-1]

    def _parent(self, planned: Planned) -> Frame | None:
        """The open parent directory of `planned`, or None (reported)."""
        path = planned.entry.path
        try:
            frame = self._descend(planned.parts[:-1])
        except RefusedError as err:
            self._warn(path, str(err), refused=True)
            return None
        except EntryFailedError as err:
            self._warn(path, str(err))
            return None
        except OSError as err:
            self._warn(path, f"cannot open its directory: {why(err)}")
            return None
        if frame.fd is None:
            if frame.dead_skip:
                self.report.skipped += 1
            else:
                self._warn(path, frame.dead, refused=frame.dead_refused)
            return None
        return frame

    # ------------------------------------------------------------------ names

    @staticmethod
    def _lstat(dir_fd: int, name: bytes) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _free_name(self, dir_fd: int, name: bytes) -> bytes:
        for n in range(1, MAX_RENAMES + 1):
            candidate = restored_name(name, n)
            if self._lstat(dir_fd, candidate) is None:
                return candidate
        raise EntryFailedError(f"no free name for a renamed copy after {MAX_RENAMES} tries")

    def _put_dir_or_block(self, planned: Planned) -> None:
        try:
            self._put_dir(planned)
        except (RefusedError, EntryFailedError, OSError):
            # Entries below must not recreate it as a plain parent: they say why instead.
            if self._stack[-1].parts == planned.parts[:-1]:
                self._stack.append(
                    Frame(
                        planned.parts,
                        None,
                        (),
                        dead=f"its directory {show(planned.parts)} could not be restored",
                    )
                )
            raise

    def _put_dir(self, planned: Planned) -> None:
        frame = self._parent(planned)
        if frame is None or frame.fd is None:
            return
        name, entry = planned.parts[-1], planned.entry
        st = self._lstat(frame.fd, name)
        if st is not None and stat.S_ISDIR(st.st_mode):
            fd = self._open_dir(frame.fd, name, (*frame.disk, name))
            meta = None
            if not planned.implicit:
                if self._conflict == "overwrite":
                    meta = entry
                    self.report.dirs += 1
                elif self._conflict == "skip":
                    self.report.skipped += 1
            self._stack.append(Frame(planned.parts, fd, (*frame.disk, name), entry=meta))
            return
        disk_name = name
        if st is not None:  # a non-directory stands where the directory goes
            if planned.implicit or self._conflict == "skip":
                self._block(planned, frame, st)
                return
            if self._conflict == "overwrite":
                os.unlink(name, dir_fd=frame.fd)  # the symlink or file itself, never a target
            else:
                disk_name = self._free_name(frame.fd, name)
                self.report.renamed += 1
        os.mkdir(disk_name, 0o700, dir_fd=frame.fd)
        fd = self._open_dir(frame.fd, disk_name, (*frame.disk, disk_name))
        self.report.dirs += 1
        self._stack.append(Frame(planned.parts, fd, (*frame.disk, disk_name), entry=entry))

    def _block(self, planned: Planned, frame: Frame, st: os.stat_result) -> None:
        """A directory that cannot be made: mark its subtree so entries below say why."""
        path = planned.entry.path
        dead = Frame(planned.parts, None, (*frame.disk, planned.parts[-1]))
        if not planned.implicit:  # skip mode
            self.report.skipped += 1
            dead.dead_skip = True
        elif stat.S_ISLNK(st.st_mode):
            self._warn(path, "is a symlink in the target; not followed", refused=True)
            dead.dead = f"its directory {show(planned.parts)} is a symlink in the target"
            dead.dead_refused = True
        else:
            self._warn(path, "a non-directory stands at its name; not replaced")
            dead.dead = f"its directory {show(planned.parts)} is not a directory in the target"
        self._stack.append(dead)

    def _open_disk_dir(self, disk: tuple[bytes, ...]) -> tuple[int, bool]:
        """(descriptor of an on-disk directory below the root, whether to close it)."""
        for frame in self._stack:
            if frame.disk == disk and frame.fd is not None:
                return frame.fd, False
        root = self._stack[0].fd
        assert root is not None
        fd = os.dup(root)
        try:
            for i, name in enumerate(disk):
                child = self._open_dir(fd, name, disk[: i + 1])
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd, True

    @staticmethod
    def _unlink_quietly(dir_fd: int, name: bytes) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)

    def close(self) -> None:
        """Finish every open directory (post-order metadata, fsync), the root last."""
        while self._stack:
            self._leave(self._stack.pop())

    def close_all(self) -> None:
        """Close every descriptor and apply nothing (a cancelled or failed restore)."""
        while self._stack:
            fd = self._stack.pop().fd
            if fd is not None:
                os.close(fd)
