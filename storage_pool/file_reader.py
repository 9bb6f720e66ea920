"""Reading groups of files into chunks for a tree walk (runs on worker threads).

A group of files is handled by one worker: first one `missing_sync` call checks every
chunk the parent (or files cache) says the group's unchanged files consist of; a file
whose chunks are all still present is reused without being read, any other is read,
cut, hashed, and its chunks are queued. Queued chunks are flushed in batches: one
`missing_sync` for the batch, compression of the missing ones spread over a shared
pool, one `put_sync`. Chunks are put before the walker adds the entries that reference
them (the walker waits for the group's result), as a target requires.

Per-file OS errors are returned as warning strings; a cancelled walk raises
`WalkCancelled` between chunks.
"""

from __future__ import annotations

import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from storage_pool import framing
from storage_pool.chunker import Chunker, ChunkerParams
from storage_pool.ids import ChunkId, chunk_id_of
from storage_pool.manifest import Entry
from storage_pool.metadata import find_holes
from storage_pool.target import BackupTarget

BATCH_CHUNKS = 16
BATCH_BYTES = 16 * 1024 * 1024


class WalkCancelled(Exception):
    """The walk was cancelled through its cancel event; nothing was committed."""


@dataclass(slots=True)
class Item:
    entry: Entry
    full: bytes
    parent: Entry | None  # the previous version, when its metadata says unchanged


@dataclass(slots=True)
class Result:
    ids: tuple[ChunkId, ...]
    sizes: tuple[int, ...]
    holes: tuple[tuple[int, int], ...]
    st: os.stat_result | None  # fstat after reading; None when reused from the parent
    read: int = 0


@dataclass(slots=True)
class Counters:
    """What the workers did, shared between threads under `lock`."""

    lock: threading.Lock
    chunks: int = 0
    put_chunks: int = 0
    put_bytes: int = 0
    bytes_read: int = 0  # live: grows while a large file is being read


class FileReader:
    """What the worker threads share: the target, one chunker per thread, counters."""

    def __init__(
        self,
        target: BackupTarget,
        chunker: ChunkerParams,
        level: int,
        compress_pool: ThreadPoolExecutor,
        cancel: threading.Event,
    ) -> None:
        self.target = target
        self.params = chunker
        self.level = level
        self.compress_pool = compress_pool
        self.cancel = cancel
        self.stop = threading.Event()  # set by the walker when it gives up on an error
        self.counters = Counters(threading.Lock())
        self.local = threading.local()

    def chunker(self) -> Chunker:
        ch: Chunker | None = getattr(self.local, "chunker", None)
        if ch is None:
            ch = self.local.chunker = Chunker(self.params)
        return ch

    def check_cancel(self) -> None:
        if self.cancel.is_set() or self.stop.is_set():
            raise WalkCancelled("the walk was cancelled")

    def process(self, items: list[Item]) -> list[Result | str]:
        self.check_cancel()
        results: list[Result | str | None] = [None] * len(items)
        reuse = [(i, it.parent) for i, it in enumerate(items) if it.parent is not None]
        if reuse:
            ids = [cid for _, p in reuse for cid in p.chunk_ids]
            missing = set(self.target.missing_sync(ids)) if ids else set()
            for i, p in reuse:
                if not missing.intersection(p.chunk_ids):
                    results[i] = Result(p.chunk_ids, p.chunk_sizes, p.holes, None)
        batch: list[tuple[ChunkId, memoryview]] = []
        batch_bytes = 0
        for i, it in enumerate(items):
            if results[i] is not None:
                continue
            self.check_cancel()
            try:
                res = self._read(it, batch)
            except OSError as err:
                results[i] = f"{os.fsdecode(it.full)}: {err.strerror or err}"
                continue
            results[i] = res
            batch_bytes += res.read
            if len(batch) >= BATCH_CHUNKS or batch_bytes >= BATCH_BYTES:
                self._flush(batch)
                batch_bytes = 0
        self._flush(batch)
        return [r if r is not None else "internal: no result" for r in results]

    def _read(self, it: Item, batch: list[tuple[ChunkId, memoryview]]) -> Result:
        try:
            fd = os.open(it.full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOATIME)
        except PermissionError:  # O_NOATIME needs ownership
            fd = os.open(it.full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise OSError(0, "is no longer a regular file")
            holes: tuple[tuple[int, int], ...] = ()
            if before.st_blocks * 512 < before.st_size:
                holes = find_holes(fd, before.st_size)
            ids: list[ChunkId] = []
            sizes: list[int] = []
            chunker = self.chunker()
            reused_buffer = before.st_size > chunker.params.min_size
            for block in chunker.cut_fd(fd, before.st_size):
                block_bytes = 0
                for piece in block:
                    cid = chunk_id_of(piece)
                    ids.append(cid)
                    sizes.append(len(piece))
                    batch.append((cid, piece))
                    block_bytes += len(piece)
                with self.counters.lock:
                    self.counters.bytes_read += block_bytes
                if reused_buffer:  # the views die when the chunker reads on
                    self._flush(batch)
                    self.check_cancel()
            after = os.fstat(fd)
        finally:
            os.close(fd)
        total = sum(sizes)
        if holes and holes[-1][0] + holes[-1][1] > total:
            holes = tuple(h for h in holes if h[0] + h[1] <= total)
        return Result(tuple(ids), tuple(sizes), holes, after, total)

    def _flush(self, batch: list[tuple[ChunkId, memoryview]]) -> None:
        if not batch:
            return
        missing = set(self.target.missing_sync([cid for cid, _ in batch]))
        todo = {cid: data for cid, data in batch if cid in missing}
        put_bytes = 0
        if todo:
            # Compression is most of the CPU cost: spread one file's chunks over all
            # workers, so a large file at the end of a tree does not run on one core.
            level = self.level
            frames = self.compress_pool.map(lambda d: framing.encode(d, level), todo.values())
            encoded = [
                framing.EncodedChunk(cid, frame, len(data))
                for (cid, data), frame in zip(todo.items(), frames, strict=True)
            ]
            self.target.put_sync(encoded)
            put_bytes = sum(len(c.frame) for c in encoded)
        with self.counters.lock:
            self.counters.chunks += len(batch)
            self.counters.put_chunks += len(todo)
            self.counters.put_bytes += put_bytes
        batch.clear()
