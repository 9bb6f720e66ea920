"""Exceptions of the storage pool: one root, a shallow tree, context as attributes.

Callers decide by class: `IntegrityError` (content does not match what was recorded) is
never retried or hidden; `PoolBusyError` is transient; the rest are permanent.
"""

from __future__ import annotations

from pathlib import Path


class PoolError(Exception):
    """Root of every error the storage pool raises."""


class PoolConfigError(PoolError):
    """The pool's config file is missing, unreadable or inconsistent."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"pool config {path}: {reason}")
        self.path = path
        self.reason = reason


class PoolVersionError(PoolConfigError):
    """The pool was written by a newer Stockade."""


class PoolBusyError(PoolError):
    """Another process holds the pool open."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"storage pool {path} is in use by another process ({holder})")
        self.path = path
        self.holder = holder


class ChunkNotFoundError(PoolError, KeyError):
    def __init__(self, chunk_hex: str, path: Path) -> None:
        super().__init__(f"chunk {chunk_hex} is missing from the pool ({path})")
        self.chunk_hex = chunk_hex
        self.path = path

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class IntegrityError(PoolError):
    """Stored bytes do not match what they claim to be. Never retried."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


class ChunkCorruptError(IntegrityError):
    def __init__(self, chunk_hex: str, path: Path, reason: str) -> None:
        super().__init__(f"chunk {chunk_hex} ({path})", reason)
        self.chunk_hex = chunk_hex
        self.path = path


class ManifestError(IntegrityError):
    """A recovery point's manifest or root record cannot be decoded or is inconsistent."""


class RecoveryPointNotFoundError(PoolError, KeyError):
    def __init__(self, rp_id: str) -> None:
        super().__init__(f"recovery point {rp_id} does not exist")
        self.rp_id = rp_id

    def __str__(self) -> str:
        return str(self.args[0])


class SessionError(PoolError):
    """A backup session was used wrongly (closed, or a manifest names unknown chunks)."""


class PoolIOError(PoolError, OSError):
    """The pool's filesystem refused a read or write (full disk, I/O error, permissions)."""

    def __init__(self, what: str, err: OSError) -> None:
        super().__init__(err.errno, f"{what}: {err.strerror or err}")
        self.what = what

    def __str__(self) -> str:
        return str(self.args[1])
