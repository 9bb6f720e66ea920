"""Cutting a put's data into hashed blocks and sending them with bounded parallelism.

Shared by the Azure (staged blocks) and S3 (multipart parts) backends. Blocks are read and
hashed in a worker thread, in order, so the whole-object SHA-256 covers exactly the bytes
that were sent; at most ``concurrency`` blocks are in memory or in flight at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from storage_pool.vault.backend import IntegrityError, PutData, VaultBackendError
from storage_pool.vault.grouped import most_important

T = TypeVar("T")

# Hashing below this size costs less than a thread hop.
_INLINE_HASH_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Block:
    index: int
    data: bytes
    md5: bytes


def data_size(data: PutData) -> int:
    if isinstance(data, Path):
        return os.stat(data).st_size
    return memoryview(data).nbytes


def _hash_block(data: bytes, whole: hashlib._Hash) -> bytes:
    whole.update(data)
    return hashlib.md5(data, usedforsecurity=False).digest()


def _read_block(fd: int, offset: int, size: int, path: Path) -> bytes:
    buf = os.pread(fd, size, offset)
    while len(buf) < size:
        more = os.pread(fd, size - len(buf), offset + len(buf))
        if not more:
            raise OSError(f"{path} shrank while being uploaded (short read at {offset})")
        buf += more
    return buf


class BlockSource:
    """The blocks of one put, hashed as they are read; `verify` checks the caller's SHA-256."""

    def __init__(
        self, data: PutData, block_size: int, *, backend: str, name: str, size: int
    ) -> None:
        self._data = data
        self._block_size = block_size
        self._backend = backend
        self._name = name
        self.size = size
        self._whole = hashlib.sha256()

    async def blocks(self) -> AsyncGenerator[Block, None]:
        data = self._data
        fd = os.open(data, os.O_RDONLY | os.O_CLOEXEC) if isinstance(data, Path) else -1
        try:
            view = memoryview(data) if not isinstance(data, Path) else None
            offset, index = 0, 0
            while offset < self.size or (index == 0 and self.size == 0):
                size = min(self._block_size, self.size - offset)
                if view is None:
                    assert isinstance(data, Path)
                    chunk = await asyncio.to_thread(_read_block, fd, offset, size, data)
                else:
                    chunk = bytes(view[offset : offset + size])
                if size <= _INLINE_HASH_BYTES:
                    md5 = _hash_block(chunk, self._whole)
                else:
                    md5 = await asyncio.to_thread(_hash_block, chunk, self._whole)
                yield Block(index, chunk, md5)
                offset += size
                index += 1
        finally:
            if fd >= 0:
                os.close(fd)

    def verify(self, expected_sha256: bytes | None) -> None:
        if expected_sha256 is None:
            return
        actual = self._whole.digest()
        if actual != expected_sha256:
            raise IntegrityError(
                self._backend,
                self._name,
                f"data read for upload has SHA-256 {actual.hex()}, caller expected "
                f"{expected_sha256.hex()}; nothing was committed",
            )


async def send_blocks(
    source: BlockSource, concurrency: int, send: Callable[[Block], Awaitable[T]]
) -> list[T]:
    """``send`` every block of ``source`` with at most ``concurrency`` in flight; results in
    block order. The first failure cancels the rest and is raised as itself (not a group)."""
    slots = asyncio.Semaphore(concurrency)
    results: dict[int, T] = {}

    async def one(block: Block) -> None:
        try:
            results[block.index] = await send(block)
        finally:
            slots.release()

    try:
        async with asyncio.TaskGroup() as group, aclosing(source.blocks()) as blocks:
            async for block in blocks:
                await slots.acquire()
                group.create_task(one(block), name=f"vault-block-{block.index}")
    except BaseExceptionGroup as grouped:
        raise _first_error(grouped) from None
    return [results[i] for i in range(len(results))]


def _first_error(grouped: BaseExceptionGroup[BaseException]) -> BaseException:
    return most_important(grouped, (IntegrityError, VaultBackendError, Exception))
