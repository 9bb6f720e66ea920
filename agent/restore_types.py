"""The restore engine's vocabulary: options, report, warnings, errors and the chunk source.

Everything here is transport-independent: the restorer reads entries from an async
iterator and chunk plaintext from a `ChunkFetcher`, so HTTP (or a local pool in tests)
plugs in from outside.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from storage_pool import ChunkId
from storage_pool.manifest import check_path

ConflictMode = Literal["overwrite", "skip", "rename"]
CONFLICT_MODES: tuple[ConflictMode, ...] = ("overwrite", "skip", "rename")

MAX_WARNINGS = 10_000  # a report stays bounded on a tree of millions of odd files


class RestoreError(Exception):
    """The restore as a whole cannot go on (target unusable, manifest or source broken).

    `report` holds what was restored before the failure; files already renamed into
    place stay there, temp files are removed.
    """

    def __init__(self, message: str, report: RestoreReport | None = None) -> None:
        super().__init__(message)
        self.report = report


class ChunkUnavailableError(Exception):
    """Raised by a `ChunkFetcher` for chunks it cannot deliver (missing, corrupt).

    Only the files using those chunks fail (counted warnings); any other exception from a
    fetcher aborts the restore with `RestoreError`.
    """

    def __init__(self, ids: Sequence[ChunkId], reason: str) -> None:
        shown = ", ".join(cid.hex()[:16] for cid in ids[:4])
        more = f" and {len(ids) - 4} more" if len(ids) > 4 else ""
        super().__init__(f"chunk {shown}{more} unavailable: {reason}")
        self.ids = tuple(ids)
        self.reason = reason


class ChunkFetcher(Protocol):
    """Where chunk plaintext comes from.

    Contract: `fetch(ids)` yields `(id, plaintext)` for every requested id, in the order
    requested, each already verified against its id (the restorer checks only lengths).
    An `async def` generator implements it. It raises `ChunkUnavailableError` when some
    of the ids cannot be delivered; the restorer then asks for the batch's ids one by
    one to find the culprits. Calls are sequential: one stream is consumed to its end
    (or closed) before the next call.
    """

    def fetch(self, ids: Sequence[ChunkId]) -> AsyncIterator[tuple[ChunkId, bytes]]: ...


@dataclass(frozen=True, slots=True)
class RestoreOptions:
    """What to restore where.

    `items` are manifest paths ('/'-separated, relative); restoring one restores its
    whole subtree and creates its parent directories (with their recorded metadata when
    created, untouched when they exist). Empty means everything.

    `conflict` decides what happens when a name already exists in the target:
    "overwrite" replaces a non-directory atomically (never a directory by a file) and
    re-applies a directory's metadata; "skip" keeps what is there (and does not restore
    below a non-directory that stands where a directory should be); "rename" restores
    the copy next to it under `restored_name()`. Existing directories are merged into
    in every mode.

    `durable`: fsync every file before renaming it into place and every directory once
    its contents are done. Off only for tests and scratch restores.
    """

    target: bytes | str | Path
    items: Sequence[bytes] = ()
    conflict: ConflictMode = "overwrite"
    preserve_owner: bool = field(default_factory=lambda: os.geteuid() == 0)
    durable: bool = True

    def target_bytes(self) -> bytes:
        return os.fsencode(self.target)

    def normalised_items(self) -> tuple[bytes, ...]:
        """Items without leading/trailing '/'; ValueError names a bad one."""
        out: list[bytes] = []
        for item in self.items:
            norm = bytes(item).strip(b"/")
            try:
                check_path(norm)
            except ValueError as err:
                raise ValueError(f"restore item {item!r}: {err}") from err
            out.append(norm)
        return tuple(out)

    def validate(self) -> None:
        if self.conflict not in CONFLICT_MODES:
            raise ValueError(f"conflict mode {self.conflict!r} is not one of {CONFLICT_MODES}")
        if not self.target_bytes():
            raise ValueError("restore target is empty")
        self.normalised_items()


@dataclass(frozen=True, slots=True)
class RestoreWarning:
    """One entry that was not restored (or not fully). `refused`: a security refusal."""

    path: bytes
    message: str
    refused: bool = False

    def __str__(self) -> str:
        prefix = "refused: " if self.refused else ""
        return f"{os.fsdecode(self.path)!r}: {prefix}{self.message}"


@dataclass(slots=True)
class RestoreReport:
    """Counts of one restore. `bytes` is the logical size of the regular files written
    (hardlinks not counted twice); `failed` counts entries not restored for a reason
    other than a conflict, refusals included; `warnings` is capped at MAX_WARNINGS,
    `warnings_total` is not."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    specials: int = 0
    bytes: int = 0
    skipped: int = 0
    renamed: int = 0
    failed: int = 0
    refused: int = 0
    warnings: list[RestoreWarning] = field(default_factory=list)
    warnings_total: int = 0

    def warn(
        self, path: builtins.bytes, message: str, *, refused: bool = False, failed: bool
    ) -> None:
        """Record a problem; `failed` when the entry was not restored at all."""
        self.warnings_total += 1
        if failed:
            self.failed += 1
        if refused:
            self.refused += 1
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(RestoreWarning(path, message, refused))

    def merge(self, other: RestoreReport) -> None:
        for name in (
            "files",
            "dirs",
            "symlinks",
            "hardlinks",
            "specials",
            "bytes",
            "skipped",
            "renamed",
            "failed",
            "refused",
            "warnings_total",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        room = MAX_WARNINGS - len(self.warnings)
        self.warnings.extend(other.warnings[: max(room, 0)])
