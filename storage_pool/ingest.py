"""Backing up a local directory tree into the pool.

This is the reference producer of recovery points: it walks a tree depth-first with
names sorted bytewise (the manifest order), reads only files that changed since the
parent recovery point (same size, mtime, ctime and inode means unchanged: the parent's
chunk ids are reused once the pool confirms it still holds them), and spreads reading,
chunking, hashing, compressing and writing over `workers` threads. Small files are
handled in groups so one index lookup and one index transaction serve many of them.

Per-file problems (vanished, unreadable, changed while read) are counted warnings: the
recovery point is committed without, or with what was read of, that file.
"""

from __future__ import annotations

import asyncio
import collections
import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from storage_pool import framing
from storage_pool.chunker import Chunker
from storage_pool.ids import ChunkId, chunk_id_of
from storage_pool.manifest import Entry, EntryType
from storage_pool.metadata import entry_from_stat, entry_type, find_holes
from storage_pool.pool import StoragePool
from storage_pool.recovery_point import RecoveryPoint
from storage_pool.session import Session

GROUP_FILES = 64
GROUP_BYTES = 8 * 1024 * 1024
BATCH_CHUNKS = 16
BATCH_BYTES = 16 * 1024 * 1024


@dataclass(slots=True)
class IngestStats:
    files: int = 0
    dirs: int = 0
    other: int = 0
    unchanged_files: int = 0
    bytes_read: int = 0
    logical_bytes: int = 0
    chunks: int = 0
    new_chunks: int = 0
    new_stored_bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(slots=True)
class _Item:
    entry: Entry
    full: bytes
    parent: Entry | None


@dataclass(slots=True)
class _Result:
    ids: tuple[ChunkId, ...]
    sizes: tuple[int, ...]
    holes: tuple[tuple[int, int], ...]
    st: os.stat_result | None  # fstat after reading; None when reused from the parent
    read: int = 0


class _Worker:
    """What one worker thread needs: its own chunker, and batched puts."""

    def __init__(
        self,
        session: Session,
        level: int,
        stats: IngestStats,
        lock: threading.Lock,
        compress_pool: ThreadPoolExecutor,
    ) -> None:
        self.session = session
        self.level = level
        self.compress_pool = compress_pool
        self.stats = stats
        self.lock = lock
        self.local = threading.local()

    def chunker(self) -> Chunker:
        ch: Chunker | None = getattr(self.local, "chunker", None)
        if ch is None:
            ch = self.local.chunker = self.session.pool.new_chunker()
        return ch

    def process(self, items: list[_Item]) -> list[_Result | str]:
        results: list[_Result | str | None] = [None] * len(items)
        reuse = [(i, it) for i, it in enumerate(items) if it.parent is not None]
        if reuse:
            ids = [cid for _, it in reuse for cid in it.parent.chunk_ids]  # type: ignore[union-attr]
            missing = set(self.session.missing_sync(ids)) if ids else set()
            for i, it in reuse:
                p = it.parent
                assert p is not None
                if not missing.intersection(p.chunk_ids):
                    results[i] = _Result(p.chunk_ids, p.chunk_sizes, p.holes, None)
        batch: list[tuple[ChunkId, memoryview]] = []
        batch_bytes = 0
        for i, it in enumerate(items):
            if results[i] is not None:
                continue
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

    def _read(self, it: _Item, batch: list[tuple[ChunkId, memoryview]]) -> _Result:
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
            reused_buffer = before.st_size > self.chunker().params.min_size
            for block in self.chunker().cut_fd(fd, before.st_size):
                for piece in block:
                    cid = chunk_id_of(piece)
                    ids.append(cid)
                    sizes.append(len(piece))
                    batch.append((cid, piece))
                if reused_buffer:  # the views die when the chunker reads on
                    self._flush(batch)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        total = sum(sizes)
        if holes and holes[-1][0] + holes[-1][1] > total:
            holes = tuple(h for h in holes if h[0] + h[1] <= total)
        return _Result(tuple(ids), tuple(sizes), holes, after, total)

    def _flush(self, batch: list[tuple[ChunkId, memoryview]]) -> None:
        if not batch:
            return
        missing = set(self.session.missing_sync([cid for cid, _ in batch]))
        todo = {cid: data for cid, data in batch if cid in missing}
        if todo:
            # Compression is most of the CPU cost: spread one file's chunks over all
            # workers, so a large file at the end of a tree does not run on one core.
            level = self.level
            frames = self.compress_pool.map(lambda d: framing.encode(d, level), todo.values())
            encoded = [
                framing.EncodedChunk(cid, frame, len(data))
                for (cid, data), frame in zip(todo.items(), frames, strict=True)
            ]
            self.session.put_sync(encoded, verify=False)
        with self.lock:
            self.stats.chunks += len(batch)
        batch.clear()


def _walk(
    root: bytes, rel: bytes, on_error: Callable[[str], None]
) -> list[tuple[bytes, bytes, os.stat_result]]:
    """One directory level: (relative path, full path, lstat), names sorted bytewise."""
    full_dir = os.path.join(root, rel) if rel else root
    out: list[tuple[bytes, bytes, os.stat_result]] = []
    try:
        with os.scandir(full_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as err:
        on_error(f"{os.fsdecode(full_dir)}: cannot list directory: {err.strerror or err}")
        return out
    for e in entries:
        name = e.name
        try:
            st = e.stat(follow_symlinks=False)
        except OSError as err:
            on_error(f"{os.fsdecode(e.path)}: {err.strerror or err}")
            continue
        out.append((rel + b"/" + name if rel else name, e.path, st))
    return out


_Slot = tuple[Entry, "Future[list[_Result | str]] | None", int]


class _TreeIngest:
    """Walks the tree in manifest order, feeds file groups to the workers, and adds
    entries to the session in order as their groups complete."""

    def __init__(
        self, session: Session, parent: RecoveryPoint | None, workers: int, stats: IngestStats
    ) -> None:
        self.session = session
        self.workers = workers
        self.stats = stats
        self.parent_files: dict[bytes, Entry] = {}
        if parent is not None:
            for e in session.pool.iter_entries_sync(parent):
                # A hardlink group's first entry carries the chunks; the others link to it.
                if e.type is EntryType.FILE and (e.hardlink_group is None or e.chunk_ids):
                    self.parent_files[e.path] = e
        self.window: collections.deque[_Slot] = collections.deque()
        self.outstanding: collections.deque[Future[list[_Result | str]]] = collections.deque()
        self.ready: list[Entry] = []
        self.group: list[_Item] = []
        self.group_bytes = 0
        self.hardlinks: dict[tuple[int, int], int] = {}

    def warn(self, msg: str) -> None:
        self.stats.warnings.append(msg)

    def run(self, root: bytes) -> RecoveryPoint:
        pool = self.session.pool
        with (
            ThreadPoolExecutor(self.workers, thread_name_prefix="ingest-store") as compress,
            ThreadPoolExecutor(self.workers, thread_name_prefix="ingest") as ex,
        ):
            worker = _Worker(
                self.session, pool.config.compression_level, self.stats, threading.Lock(), compress
            )
            self.ex, self.worker = ex, worker
            stack = [_walk(root, b"", self.warn)]
            while stack:
                if not stack[-1]:
                    stack.pop()
                    continue
                rel, full, st = stack[-1].pop(0)
                if self.visit(rel, full, st):
                    stack.append(_walk(root, rel, self.warn))
                self.drain(block=len(self.outstanding) >= self.workers * 4)
            self.submit_group()
            while self.window or self.outstanding:
                self.drain(block=True)
        self.session.add_entries_sync(self.ready)
        return self.session.commit_sync()

    def visit(self, rel: bytes, full: bytes, st: os.stat_result) -> bool:
        """Record one object; True when it is a directory to descend into."""
        etype = entry_type(st)
        if etype is None:
            self.warn(f"{os.fsdecode(full)}: unsupported file type, skipped")
            return False
        try:
            entry = entry_from_stat(rel, full, st, etype)
        except OSError as err:
            self.warn(f"{os.fsdecode(full)}: {err.strerror or err}")
            return False
        if etype is not EntryType.FILE:
            if etype is EntryType.DIR:
                self.stats.dirs += 1
            else:
                self.stats.other += 1
            self.add_now(entry)
            return etype is EntryType.DIR
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in self.hardlinks:
                self.stats.files += 1
                self.add_now(replace(entry, hardlink_group=self.hardlinks[key]))
                return False
            entry.hardlink_group = self.hardlinks[key] = len(self.hardlinks)
        if st.st_size == 0:
            self.stats.files += 1
            self.add_now(entry)
            return False
        p = self.parent_files.get(rel)
        if p is not None and (p.size, p.mtime_ns, p.ctime_ns, p.inode) != (
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
        ):
            p = None
        if st.st_size > GROUP_BYTES:
            self.submit_group()
        self.group.append(_Item(entry, full, p))
        self.group_bytes += 0 if p is not None else st.st_size
        if len(self.group) >= GROUP_FILES or self.group_bytes >= GROUP_BYTES:
            self.submit_group()
        return False

    def add_now(self, entry: Entry) -> None:
        """An entry that needs no reading still waits for the files before it."""
        self.submit_group()
        self.window.append((entry, None, 0))

    def submit_group(self) -> None:
        if not self.group:
            return
        fut = self.ex.submit(self.worker.process, self.group)
        for idx, item in enumerate(self.group):
            self.window.append((item.entry, fut, idx))
        self.outstanding.append(fut)
        self.group, self.group_bytes = [], 0

    def drain(self, *, block: bool) -> None:
        while self.outstanding and (block or self.outstanding[0].done()):
            self.outstanding.popleft().result()  # surfaces worker crashes at once
            block = block and len(self.outstanding) >= self.workers * 4
        while self.window:
            entry, fut, idx = self.window[0]
            if fut is not None and not fut.done():
                break
            self.window.popleft()
            if fut is None:
                self.ready.append(entry)
                continue
            res = fut.result()[idx]
            if isinstance(res, str):
                self.warn(res)
                continue
            self.ready.append(_complete(entry, res, self.stats))
        if len(self.ready) >= 1000:
            self.session.add_entries_sync(self.ready)
            self.ready.clear()


def _complete(entry: Entry, res: _Result, stats: IngestStats) -> Entry:
    stats.files += 1
    stats.logical_bytes += sum(res.sizes)
    if res.st is None:
        stats.unchanged_files += 1
        return replace(entry, chunk_ids=res.ids, chunk_sizes=res.sizes, holes=res.holes)
    stats.bytes_read += res.read
    st = res.st
    if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns) or res.read != st.st_size:
        stats.warnings.append(f"{entry.path.decode(errors='replace')}: changed while being read")
    return replace(
        entry,
        size=res.read,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        chunk_ids=res.ids,
        chunk_sizes=res.sizes,
        holes=res.holes,
    )


async def ingest_tree(
    pool: StoragePool,
    data_source: str,
    root: Path | str,
    *,
    workers: int = 2,
    parent: RecoveryPoint | Literal["latest"] | None = "latest",
) -> tuple[RecoveryPoint, IngestStats]:
    """Back up the tree at `root` as a new recovery point of `data_source`."""
    if parent == "latest":
        rps = await pool.list_recovery_points(data_source)
        parent = rps[-1] if rps else None
    started = time.perf_counter()
    stats = IngestStats()
    root_b = os.fsencode(os.path.abspath(root))  # noqa: ASYNC240 - no I/O, string work only
    if not await asyncio.to_thread(os.path.isdir, root_b):
        raise NotADirectoryError(f"{os.fsdecode(root_b)} is not a directory")
    async with pool.session(data_source, parent=parent.id if parent else None) as session:
        tree = _TreeIngest(session, parent, workers, stats)
        rp = await asyncio.to_thread(tree.run, root_b)
        stats.new_chunks = session.stats.put.new_chunks
        stats.new_stored_bytes = session.stats.put.new_stored_bytes
    stats.seconds = time.perf_counter() - started
    return rp, stats
