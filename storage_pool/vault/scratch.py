"""The scratch area: a bounded local folder packs pass through on their way to the vault.

`ScratchBudget` counts bytes reserved in the scratch folder. A pack writer reserves
before it grows a pack file by a blob; an uploader releases a pack's bytes after the
vault holds it and the file is gone. A reservation that does not fit waits (an async
condition) until uploads release enough, so scratch usage never exceeds `limit`:
`high_water` is the most ever reserved at once, for tests and metrics.

Reservations are taken before the bytes are written and released after the file is
deleted, so the bytes on disk are always at or below `in_use`.

`clean_scratch` runs at the start of a job: ``.partial`` files (a pack a crash cut short)
are deleted; the complete ``.pack`` files it returns are the caller's to upload or
adopt (uploader.py), then delete. Files the vault code did not make are left alone.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

PARTIAL_SUFFIX = ".partial"
PACK_SUFFIX = ".pack"


class ScratchTooSmallError(Exception):
    """A single reservation is larger than the whole scratch bound: waiting cannot help."""

    def __init__(self, wanted: int, limit: int) -> None:
        super().__init__(
            f"the scratch area bound of {limit} bytes cannot hold {wanted} bytes at once;"
            " raise the scratch bound or lower the pack size"
        )
        self.wanted = wanted
        self.limit = limit


class ScratchBudget:
    """Bytes reserved in the scratch area, never more than `limit`. One event loop only."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("the scratch bound must be positive")
        self.limit = limit
        self.in_use = 0
        self.high_water = 0
        self._changed = asyncio.Condition()

    def __repr__(self) -> str:
        return (
            f"ScratchBudget(in_use={self.in_use}, high_water={self.high_water}, limit={self.limit})"
        )

    @property
    def free(self) -> int:
        return self.limit - self.in_use

    def try_reserve(self, size: int) -> bool:
        """Reserve `size` bytes now if they fit; never waits."""
        if size < 0:
            raise ValueError("cannot reserve a negative size")
        if size > self.limit:
            raise ScratchTooSmallError(size, self.limit)
        if self.in_use + size > self.limit:
            return False
        self.in_use += size
        self.high_water = max(self.high_water, self.in_use)
        return True

    async def reserve(self, size: int, *, stuck: Callable[[], bool] | None = None) -> bool:
        """Reserve `size` bytes, waiting for releases while they do not fit.

        False (nothing reserved) when `stuck()` says no release can come, so the caller
        can free space itself (finish and upload the pack it is holding) instead of
        waiting forever. The check and the wait share the condition's lock: no release
        is missed between them.
        """
        async with self._changed:
            while not self.try_reserve(size):
                if stuck is not None and stuck():
                    return False
                await self._changed.wait()
            return True

    def release(self, size: int) -> None:
        if size < 0 or size > self.in_use:
            raise ValueError(f"releasing {size} bytes of {self.in_use} reserved")
        self.in_use -= size
        # Waking the waiters needs the condition's lock: do it in a task so release
        # stays synchronous (callable from finally blocks and callbacks).
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def clean_scratch(scratch_dir: Path) -> list[Path]:
    """Delete ``.partial`` files; return the complete ``.pack`` files (blocking)."""
    scratch_dir.mkdir(parents=True, exist_ok=True)
    packs: list[Path] = []
    for entry in os.scandir(scratch_dir):
        if not entry.is_file(follow_symlinks=False):
            continue
        path = Path(entry.path)
        if path.name.endswith(PARTIAL_SUFFIX):
            path.unlink(missing_ok=True)
        elif path.name.endswith(PACK_SUFFIX):
            packs.append(path)
    return sorted(packs)


def scratch_usage(scratch_dir: Path) -> int:
    """Bytes of pack files in the scratch area now (complete or partial), for tests."""
    total = 0
    for entry in os.scandir(scratch_dir):
        if entry.name.endswith((PARTIAL_SUFFIX, PACK_SUFFIX)):
            try:
                total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
    return total
