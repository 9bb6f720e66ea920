"""The vault backend interface: one small async object store with written contracts.

A backend stores opaque bytes under names inside one container (a folder, an Azure Blob
container, a prefix of an S3 bucket). It knows nothing of encryption or of the vault format.
Every implementation passes the same contract suite (tests/integration/vault/).

Names: one to eight ``/``-separated segments of ``[A-Za-z0-9_.-]``, each starting with a
letter or digit, 512 characters at most (`check_name`). Segments never start with ``.`` or
``@``, which leaves those to a backend's own bookkeeping (temp files, fan-out directories).

Contracts every backend keeps:

- **Atomic visibility.** After `put` or `create_if_absent` returns, every reader sees the
  whole new object; before it returns, or if it raised or was cancelled, readers see the
  previous object under that name (or none). Never a prefix, never a mix.
- **End-to-end integrity.** `put` hashes the bytes it actually sends. Each block or part
  carries its MD5 so the service rejects bytes damaged in transit, and the SHA-256 of the
  whole object is compared with the caller's ``sha256`` before the object is committed.
  A mismatch raises `IntegrityError`, leaves nothing visible and is never retried.
- **Errors are classified.** Implementations map every SDK, HTTP and OS error into the
  tree below and keep the original text in ``reason``: callers (the retry wrapper, the
  connection-state logic) decide by class alone.
- **No retries inside a backend.** SDK-internal retries are switched off; `retry.Retrying`
  is the one place that retries, and only `TransientError` and `Throttled`.
- A backend is not safe to share between event loops; it is safe for concurrent calls on
  one loop.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Literal, NamedTuple, Self

__all__ = [
    "MAX_NAME_LENGTH",
    "AuthError",
    "ContainerGone",
    "IntegrityError",
    "NotFound",
    "ObjectInfo",
    "PutData",
    "Throttled",
    "TransientError",
    "TransientKind",
    "VaultBackend",
    "VaultBackendError",
    "check_name",
    "check_prefix",
    "empty_or_bad_range",
    "parse_retry_after",
]

MAX_NAME_LENGTH = 512
_MAX_SEGMENTS = 8
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")

# What a put sends: bytes in memory, or a file read block by block (never all at once).
PutData = bytes | bytearray | memoryview | Path

# Where a transient failure came from, for the connection-state logic (issue 6).
TransientKind = Literal["dns", "connect", "tls", "timeout", "reset", "server_error", "other"]


class ObjectInfo(NamedTuple):
    name: str
    size: int


# --------------------------------------------------------------------------- errors


class VaultBackendError(Exception):
    """Root of every error a vault backend raises.

    ``backend`` is the kind and place ("azure container x"), ``name`` the object (or None
    for container-level calls), ``reason`` the original SDK/OS/service text, ``status`` the
    HTTP status and ``code`` the service's error code where there was one.
    """

    def __init__(
        self,
        backend: str,
        name: str | None,
        reason: str,
        *,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        what = f"{backend}: object {name!r}" if name is not None else backend
        super().__init__(f"{what}: {reason}")
        self.backend = backend
        self.name = name
        self.reason = reason
        self.status = status
        self.code = code


class NotFound(VaultBackendError, KeyError):
    """The object does not exist (the container does)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class AuthError(VaultBackendError):
    """Credentials were rejected (HTTP 401/403): wrong key, expired or narrowed SAS. Permanent."""


class ContainerGone(VaultBackendError):
    """The container, bucket or vault folder itself does not exist. Permanent."""


class IntegrityError(VaultBackendError):
    """Bytes did not arrive as sent (checksum mismatch). Never retried, never hidden."""


class TransientError(VaultBackendError):
    """Timeouts, connection failures, 5xx: the same call may succeed later.

    ``kind`` says where it failed (DNS, TCP connect, TLS, timeout, reset, server error).
    """

    def __init__(
        self,
        backend: str,
        name: str | None,
        reason: str,
        *,
        kind: TransientKind = "other",
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(backend, name, reason, status=status, code=code)
        self.kind: TransientKind = kind


class Throttled(TransientError):
    """The service asked us to slow down (429, 503 ServerBusy/SlowDown).

    ``retry_after`` is the service's Retry-After in seconds, or None when it sent none.
    """

    def __init__(
        self,
        backend: str,
        name: str | None,
        reason: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(backend, name, reason, kind="server_error", status=status, code=code)
        self.retry_after = retry_after


# --------------------------------------------------------------------------- names


def check_name(name: str) -> str:
    """``name`` if it is a valid object name, else ValueError naming the rule broken."""
    if not name or len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"object name must be 1..{MAX_NAME_LENGTH} characters: {name!r}")
    segments = name.split("/")
    if len(segments) > _MAX_SEGMENTS:
        raise ValueError(f"object name has more than {_MAX_SEGMENTS} segments: {name!r}")
    for segment in segments:
        if not _SEGMENT.match(segment):
            raise ValueError(
                f"object name segment {segment!r} of {name!r} must be [A-Za-z0-9_.-] and "
                "start with a letter or digit"
            )
    return name


def check_prefix(prefix: str) -> str:
    """``prefix`` if some valid name could start with it ("" lists everything)."""
    if not prefix:
        return prefix
    head, _, tail = prefix.rpartition("/")
    if head:
        check_name(head)
    if tail and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", tail):
        raise ValueError(f"list prefix {prefix!r} cannot start any valid object name")
    return prefix


async def empty_or_bad_range(
    backend: VaultBackend, name: str, offset: int, length: int
) -> bytes | None:
    """What every `get_range` does before asking its service: ValueError for a negative
    offset or length, and for ``length == 0`` b"" (or NotFound) without a ranged request,
    which HTTP cannot express. None: go ahead and read."""
    if offset < 0 or length < 0:
        raise ValueError(f"bad range offset={offset} length={length} for {name!r}")
    if length:
        return None
    if await backend.head(name) is None:
        raise NotFound(backend.description, name, "no such object")
    return b""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form only; dates are rare here)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


# --------------------------------------------------------------------------- interface


class VaultBackend(ABC):
    """One container of named, opaque objects. See the module docstring for the contracts."""

    @property
    @abstractmethod
    def description(self) -> str:
        """Kind and place for messages and logs ("s3 bucket b prefix p/"). No secrets."""

    @abstractmethod
    async def put(self, name: str, data: PutData, *, sha256: bytes | None = None) -> None:
        """Store ``data`` under ``name``, replacing any object there, atomically.

        ``data`` is bytes or a path to a file, read block by block (its size must not change
        during the call). Large objects go up as blocks/parts with bounded parallelism,
        each with its MD5; ``sha256``, when given, is the digest the caller expects of the
        whole object: on a mismatch nothing is committed and `IntegrityError` is raised.
        """

    @abstractmethod
    async def get(self, name: str) -> bytes:
        """The whole object. `NotFound` if it does not exist."""

    @abstractmethod
    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``; shorter only where the object ends.

        `NotFound` if the object does not exist; ValueError for a negative offset or
        length. A range starting at or past the end returns b"".
        """

    @abstractmethod
    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every committed object whose name starts with ``prefix``, in no promised order.

        Objects being written and never-committed uploads are not listed.
        """

    @abstractmethod
    async def head(self, name: str) -> int | None:
        """The object's size, or None if it does not exist."""

    @abstractmethod
    async def delete(self, name: str) -> None:
        """Remove the object. Idempotent: deleting a missing object is not an error."""

    @abstractmethod
    async def create_if_absent(self, name: str, data: bytes) -> bool:
        """Store ``data`` under ``name`` only if nothing is there; True if this call did.

        Conditional on the service (If-None-Match: * on Azure and S3, link(2) on a folder):
        of two racing callers exactly one gets True, and an existing object is never changed.
        Meant for small objects (the vault header, locks), sent in one request.
        """

    @abstractmethod
    async def ensure_container(self) -> None:
        """Create the container/bucket/folder if missing. Idempotent."""

    @abstractmethod
    async def container_exists(self) -> bool:
        """Whether the container/bucket/folder exists (AuthError if we may not ask)."""

    @abstractmethod
    async def abort_stale_uploads(self, older_than: timedelta) -> int:
        """Discard uncommitted uploads started more than ``older_than`` ago; how many.

        S3: open multipart uploads. Azure: blobs holding only uncommitted blocks. Folder:
        temp files left by a crash. Younger ones may belong to a running put and stay.
        """

    @abstractmethod
    async def close(self) -> None:
        """Release connections. Idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
