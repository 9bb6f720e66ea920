"""The folder vault backend: objects as files under one root directory (the embedded default).

Layout: object ``a/b/name`` lives at ``ROOT/a/b/@na/name`` — the name's directory segments,
then a fan-out directory ``@`` + the first two characters of the last segment (vault object
names are random hex, so this spreads them over 256 directories), then the file. ``@`` and
``.`` cannot start a name segment, so fan-out directories and temp files never collide with
objects. The root itself is the container: it is created only by `ensure_container`.

Write order of `put`: write ``.put-<random>`` beside the final file while hashing, fsync it,
compare the SHA-256, rename over the final name, fsync the directory. `create_if_absent`
links the fsynced temp file to the final name (link(2) fails if the name exists) instead of
renaming. A crash leaves at most a ``.put-*`` file, removed by `abort_stale_uploads`.

Blocking file I/O runs in worker threads (`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from storage_pool.atomicfile import fsync_dir
from storage_pool.vault.backend import (
    AuthError,
    ContainerGone,
    IntegrityError,
    NotFound,
    ObjectInfo,
    PutData,
    TransientError,
    VaultBackend,
    VaultBackendError,
    check_name,
    check_prefix,
)

__all__ = ["FolderBackend"]

T = TypeVar("T")
TMP_PREFIX = ".put-"
FANOUT_MARK = "@"
_COPY_BLOCK = 8 * 1024 * 1024
# errnos a network filesystem (NFS, SMB) returns when the same call may succeed later.
_TRANSIENT_ERRNOS = {errno.ETIMEDOUT, errno.EIO, errno.EAGAIN, errno.ESTALE, errno.EINTR}


class FolderBackend(VaultBackend):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def description(self) -> str:
        return f"folder vault {self.root}"

    # ------------------------------------------------------------------ paths

    def _path(self, name: str) -> Path:
        *dirs, last = check_name(name).split("/")
        return self.root.joinpath(*dirs, FANOUT_MARK + last[:2], last)

    def _name_of(self, relative_dir: tuple[str, ...], filename: str) -> str:
        return "/".join((*relative_dir, filename))

    # ------------------------------------------------------------------ errors

    async def _run(self, name: str | None, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except VaultBackendError:
            raise
        except FileNotFoundError as err:
            if not self.root.is_dir():
                raise ContainerGone(
                    self.description, None, f"vault folder does not exist ({err.strerror})"
                ) from err
            raise NotFound(self.description, name, "no such object") from err
        except PermissionError as err:
            raise AuthError(self.description, name, str(err)) from err
        except OSError as err:
            if err.errno in _TRANSIENT_ERRNOS:
                raise TransientError(self.description, name, str(err), kind="other") from err
            raise VaultBackendError(self.description, name, str(err)) from err

    def _require_root(self) -> None:
        if not self.root.is_dir():
            raise ContainerGone(self.description, None, "vault folder does not exist")

    def _make_dirs(self, directory: Path) -> None:
        """Create ``directory`` under the root, fsyncing each parent that gained an entry."""
        missing: list[Path] = []
        probe = directory
        while not probe.is_dir():
            if probe == self.root:
                self._require_root()
            missing.append(probe)
            probe = probe.parent
        for new in reversed(missing):
            try:
                new.mkdir()
            except FileExistsError:
                continue
            fsync_dir(new.parent)

    def _write_tmp(self, final: Path, data: PutData, name: str) -> tuple[Path, bytes]:
        """A fsynced temp file beside ``final`` holding ``data``; its path and SHA-256."""
        self._make_dirs(final.parent)
        tmp = final.with_name(f"{TMP_PREFIX}{secrets.token_hex(8)}")
        digest = hashlib.sha256()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            if isinstance(data, Path):
                with data.open("rb", buffering=0) as src:
                    while block := src.read(_COPY_BLOCK):
                        digest.update(block)
                        _write_all(fd, block)
            else:
                digest.update(data)
                _write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return tmp, digest.digest()

    # ------------------------------------------------------------------ objects

    async def put(self, name: str, data: PutData, *, sha256: bytes | None = None) -> None:
        final = self._path(name)

        def work() -> None:
            tmp, actual = self._write_tmp(final, data, name)
            if sha256 is not None and actual != sha256:
                tmp.unlink(missing_ok=True)
                raise IntegrityError(
                    self.description,
                    name,
                    f"data written has SHA-256 {actual.hex()}, caller expected "
                    f"{sha256.hex()}; nothing was committed",
                )
            os.rename(tmp, final)
            fsync_dir(final.parent)

        await self._run(name, work)

    async def create_if_absent(self, name: str, data: bytes) -> bool:
        final = self._path(name)

        def work() -> bool:
            tmp, _ = self._write_tmp(final, data, name)
            try:
                os.link(tmp, final)
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
            fsync_dir(final.parent)
            return True

        return await self._run(name, work)

    async def get(self, name: str) -> bytes:
        path = self._path(name)
        return await self._run(name, path.read_bytes)

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"bad range offset={offset} length={length} for {name!r}")
        path = self._path(name)

        def work() -> bytes:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                parts: list[bytes] = []
                got = 0
                while got < length:
                    part = os.pread(fd, length - got, offset + got)
                    if not part:
                        break
                    parts.append(part)
                    got += len(part)
                return b"".join(parts)
            finally:
                os.close(fd)

        return await self._run(name, work)

    async def head(self, name: str) -> int | None:
        path = self._path(name)
        try:
            return await self._run(name, lambda: path.stat().st_size)
        except NotFound:
            return None

    async def delete(self, name: str) -> None:
        path = self._path(name)

        def work() -> None:
            try:
                path.unlink()
            except FileNotFoundError:
                self._require_root()
                return
            fsync_dir(path.parent)

        await self._run(name, work)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        check_prefix(prefix)
        head, _, _ = prefix.rpartition("/")
        start_parts = tuple(head.split("/")) if head else ()

        def work() -> builtins.list[ObjectInfo]:
            self._require_root()
            found: builtins.list[ObjectInfo] = []
            self._walk(self.root.joinpath(*start_parts), start_parts, prefix, found)
            return found

        for info in await self._run(None, work):
            yield info

    def _walk(
        self,
        directory: Path,
        parts: tuple[str, ...],
        prefix: str,
        found: builtins.list[ObjectInfo],
    ) -> None:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name.startswith(FANOUT_MARK) and entry.is_dir(follow_symlinks=False):
                for obj in os.scandir(entry.path):
                    if obj.name.startswith(TMP_PREFIX) or not obj.is_file(follow_symlinks=False):
                        continue
                    name = self._name_of(parts, obj.name)
                    if name.startswith(prefix):
                        found.append(ObjectInfo(name, obj.stat(follow_symlinks=False).st_size))
            elif entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                sub = (*parts, entry.name)
                sub_name = "/".join(sub) + "/"
                if sub_name.startswith(prefix) or prefix.startswith(sub_name):
                    self._walk(Path(entry.path), sub, prefix, found)

    # ------------------------------------------------------------------ container

    async def ensure_container(self) -> None:
        def work() -> None:
            if self.root.is_dir():
                return
            self.root.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.root.parent)

        await self._run(None, work)

    async def container_exists(self) -> bool:
        return await self._run(None, self.root.is_dir)

    async def abort_stale_uploads(self, older_than: timedelta) -> int:
        cutoff = time.time() - older_than.total_seconds()

        def work() -> int:
            removed = 0
            for directory, _dirs, files in os.walk(self.root):
                for filename in files:
                    if not filename.startswith(TMP_PREFIX):
                        continue
                    path = Path(directory, filename)
                    try:
                        if path.stat().st_mtime < cutoff:
                            path.unlink()
                            removed += 1
                    except FileNotFoundError:
                        continue
            return removed

        return await self._run(None, work)

    async def close(self) -> None:
        return None


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
