"""The storage pool: the async facade over chunk files, the index and recovery points.

Blocking work (file I/O, fsync, hashing, zstd, sqlite3) runs on a bounded thread pool,
so an event loop that uses the pool stays responsive. One process opens a pool at a time
(an exclusive flock on `pool.lock`); inside it, sessions, GC and verify run concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import functools
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import ParamSpec, TypeVar

from storage_pool import framing
from storage_pool.atomicfile import TMP_MARK, fsync_dir, make_dir_durable, syncfs, write_atomic
from storage_pool.chunk_store import SHARD_DIGITS, ChunkStore
from storage_pool.chunker import Chunker
from storage_pool.config import CONFIG_NAME, PoolConfig, read_config, write_config
from storage_pool.errors import (
    ManifestError,
    PoolBusyError,
    PoolConfigError,
    PoolError,
    PoolIOError,
    RecoveryPointNotFoundError,
)
from storage_pool.gc import SAFETY_FULL, GcReport, SafetyParameters, collect
from storage_pool.ids import ChunkId, RecoveryPointId, parse_recovery_point_id
from storage_pool.index import INDEX_NAME, ChunkIndex
from storage_pool.manifest import Entry, iter_entries
from storage_pool.recovery_point import RP_DIR, RecoveryPoint, data_source_dirname, record_path
from storage_pool.session import PutResult, Session
from storage_pool.verify import ChunkSource, VerifyReport, verify

P = ParamSpec("P")
T = TypeVar("T")
LOCK_NAME = "pool.lock"
DIRTY_NAME = "open.dirty"
# FILESYSTEM durability: a background sync starts at the first threshold; writers wait
# for one at the second, which bounds what a crash can leave torn.
SYNC_START_BYTES = 64 * 1024 * 1024
SYNC_FORCE_BYTES = 1024 * 1024 * 1024
SYNC_FORCE_CHUNKS = 65536


class Durability(enum.StrEnum):
    """How chunk writes are made durable (PBS calls this the datastore fsync level).

    FILE: fsync each chunk file and its directory before indexing it. Strict, and bound
    by the disk's flush latency (~1 ms a flush here: ~1000 chunks/s).
    FILESYSTEM: write chunks without fsync and make a whole batch durable with one
    syncfs() before indexing it or committing anything that references it. Same
    guarantee for recovery points; after a crash, unsynced chunk files may be torn,
    which is why an unclean open re-checks every chunk file the index does not know.
    """

    FILE = "file"
    FILESYSTEM = "filesystem"


@dataclass(frozen=True, slots=True)
class PoolStats:
    recovery_points: int
    logical_bytes: int
    stored_bytes: int
    chunk_count: int
    fs_total_bytes: int
    fs_free_bytes: int

    @property
    def dedup_ratio(self) -> float:
        """Logical bytes per stored byte (dedup and compression together)."""
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else 0.0


@dataclass(slots=True)
class MarkState:
    """What GC must not sweep beyond committed RPs: chunks touched by sessions.

    `watchers` holds, for each running GC, every session open at any moment of its run;
    a session that commits during GC stays there, so its chunks survive that GC even if
    its record appeared after GC listed the recovery points.
    """

    lock: threading.Lock = field(default_factory=threading.Lock)
    open_sessions: set[Session] = field(default_factory=set)
    watchers: list[set[Session]] = field(default_factory=list)
    # Chunks written and named but not yet synced, so not yet in the index.
    # Value: (stored size, write generation); the generation tells a sync that finished
    # after GC swept a chunk and a session wrote it again that this copy is not synced.
    pending: dict[ChunkId, tuple[int, int]] = field(default_factory=dict)
    pending_bytes: int = 0
    generation: int = 0


class StoragePool:
    def __init__(
        self,
        root: Path,
        config: PoolConfig,
        lock_fd: int,
        *,
        io_workers: int,
        clock: Callable[[], int],
        durability: Durability,
    ) -> None:
        self.root = root
        self.config = config
        self.durability = Durability(durability)
        self._lock_fd = lock_fd
        self.store = ChunkStore(root)
        self.marks = MarkState()
        self._sync_lock = threading.Lock()
        self.recovered_chunks: tuple[int, int] = (0, 0)
        self.now_ns = clock
        self.index = self._open_index()
        self._executor = ThreadPoolExecutor(io_workers, thread_name_prefix="pool-io")
        self._closed = False
        self._sync_wanted = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, name="pool-sync", daemon=True)

    def _sync_loop(self) -> None:
        while True:
            self._sync_wanted.wait()
            self._sync_wanted.clear()
            if self._closed:
                return
            # A failure here resurfaces in the commit's own sync(), where a caller can act.
            with contextlib.suppress(PoolError):
                self.sync()

    # -- opening and closing --

    @classmethod
    async def create(
        cls,
        root: Path | str,
        config: PoolConfig | None = None,
        *,
        io_workers: int = 4,
        clock: Callable[[], int] = time.time_ns,
        durability: Durability = Durability.FILESYSTEM,
    ) -> StoragePool:
        root = Path(root)
        cfg = config or PoolConfig()

        def work() -> None:
            make_dir_durable(root)

            def check() -> None:
                if (root / CONFIG_NAME).exists():
                    raise PoolConfigError(root / CONFIG_NAME, "a pool already exists here")
                # A create that was killed leaves only its own empty skeleton: finish it.
                if not _is_unfinished_skeleton(root):
                    raise PoolConfigError(root / CONFIG_NAME, f"{root} is not empty")

            check()  # before the lock file: refusing must leave the directory as it was
            lock_fd = _lock(root)
            try:
                check()  # again, now that no other create can be running
                for p in root.iterdir():
                    if p.name.startswith(CONFIG_NAME + TMP_MARK):
                        p.unlink()
                for sub in ("chunks", RP_DIR):
                    make_dir_durable(root / sub)
                # All shard directories up front: creating one lazily costs a directory
                # fsync in the middle of a backup.
                for i in range(16**SHARD_DIGITS):
                    (root / "chunks" / f"{i:0{SHARD_DIGITS}x}").mkdir(exist_ok=True)
                fsync_dir(root / "chunks")
                write_config(root, cfg)  # last: its presence says the pool is complete
            finally:
                os.close(lock_fd)

        await asyncio.to_thread(work)
        return await cls.open(root, io_workers=io_workers, clock=clock, durability=durability)

    @classmethod
    async def open(
        cls,
        root: Path | str,
        *,
        io_workers: int = 4,
        clock: Callable[[], int] = time.time_ns,
        durability: Durability = Durability.FILESYSTEM,
    ) -> StoragePool:
        root = Path(root)

        def work() -> StoragePool:
            cfg = read_config(root)
            lock_fd = _lock(root)
            try:
                pool = cls(
                    root, cfg, lock_fd, io_workers=io_workers, clock=clock, durability=durability
                )
            except BaseException:
                os.close(lock_fd)
                raise
            try:
                pool._recover_after_crash()
            except BaseException:
                pool._executor.shutdown()
                pool.index.close()
                os.close(lock_fd)
                raise
            pool._syncer.start()
            return pool

        return await asyncio.to_thread(work)

    def _open_index(self) -> ChunkIndex:
        path = self.root / INDEX_NAME
        try:
            index = ChunkIndex(path)
            complete = index.get_meta("complete") == "1"
        except sqlite3.DatabaseError:
            # The index is a cache of chunks/: a damaged one is set aside and rebuilt.
            for suffix in ("", "-wal", "-shm"):
                p = Path(f"{path}{suffix}")
                if p.exists():
                    p.rename(p.with_name(f"{p.name}.damaged-{time.time_ns()}"))
            index = ChunkIndex(path)
            complete = False
        if not complete:
            # After an unclean stop, files written since the last sync may be torn: check
            # each one before trusting it.
            self._rebuild_index(index, check=(self.root / DIRTY_NAME).exists())
        return index

    def _rebuild_index(self, index: ChunkIndex, *, check: bool = False) -> int:
        if check:  # what is checked below is then what is on the disk
            syncfs(self.root)
        index.clear()
        count = 0
        batch: list[tuple[ChunkId, int]] = []
        for cf in self.store.iter_files():
            if check:
                try:
                    framing.decode_verified(cf.path.read_bytes(), cf.id)
                except framing.FrameError:
                    cf.path.unlink(missing_ok=True)
                    continue
            batch.append((cf.id, cf.size))
            if len(batch) >= 10_000:
                index.add(batch)
                count += len(batch)
                batch = []
        index.add(batch)
        count += len(batch)
        index.set_meta("complete", "1")
        return count

    def _recover_after_crash(self) -> None:
        # No other process can be writing (we hold the lock): temp files are leftovers.
        self.store.remove_stale_tmp()
        for p in self.root.iterdir():
            if TMP_MARK in p.name:
                p.unlink()
        dirty = self.root / DIRTY_NAME
        if dirty.exists():
            self.recovered_chunks = self._check_unindexed()
        else:
            self.recovered_chunks = (0, 0)
            write_atomic(dirty, f"opened by pid {os.getpid()}\n".encode())
        rp_root = self.root / RP_DIR
        if rp_root.is_dir():
            for ds_dir in rp_root.iterdir():
                for p in ds_dir.iterdir() if ds_dir.is_dir() else ():
                    if TMP_MARK in p.name:
                        p.unlink()

    def _check_unindexed(self) -> tuple[int, int]:
        """After an unclean stop: chunk files the index lacks were written after the last
        sync and may be torn. Keep the sound ones (indexed after a sync), delete the rest.
        Returns (kept, deleted)."""
        kept: list[tuple[ChunkId, int]] = []
        deleted = 0
        for shard in self.store.shards():
            files, _ = self.store.scan_shard(shard)
            known = self.index.present([cf.id for cf in files])
            for cf in files:
                if cf.id in known:
                    continue
                try:
                    framing.decode_verified(cf.path.read_bytes(), cf.id)
                except framing.FrameError:
                    cf.path.unlink(missing_ok=True)
                    deleted += 1
                else:
                    kept.append((cf.id, cf.size))
        syncfs(self.root)
        self.index.add(kept)
        return len(kept), deleted

    def sync(self) -> None:
        """Make every pending chunk durable and enter it in the index (blocking)."""
        with self._sync_lock:
            with self.marks.lock:
                snapshot = dict(self.marks.pending)
            if not snapshot:
                return
            try:
                syncfs(self.root)
            except OSError as err:
                raise PoolIOError(f"syncing pool {self.root}", err) from err
            with self.marks.lock:
                # GC may have swept some meanwhile (it drops them from `pending`), and a
                # session may have written one of those again after our syncfs began.
                pending = self.marks.pending
                rows = [(cid, v[0]) for cid, v in snapshot.items() if pending.get(cid) == v]
                self.index.add(rows)
                for cid, size in rows:
                    del pending[cid]
                    self.marks.pending_bytes -= size

    def present(self, ids: Sequence[ChunkId]) -> set[ChunkId]:
        """Which of `ids` the pool holds (indexed, or written and awaiting sync)."""
        found = self.index.present(ids)
        with self.marks.lock:
            pending = self.marks.pending
            if pending:
                found.update(cid for cid in ids if cid in pending)
        return found

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._close_blocking)

    def _close_blocking(self) -> None:
        # Waiting for running work, the last sync and the fsyncs all block: off the loop.
        self._executor.shutdown(wait=True)
        self._sync_wanted.set()
        self._syncer.join()
        self.sync()
        (self.root / DIRTY_NAME).unlink(missing_ok=True)
        fsync_dir(self.root)
        self.index.close()
        os.close(self._lock_fd)

    async def __aenter__(self) -> StoragePool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing shared with sessions, gc and verify --

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._closed:
            raise PoolError(f"storage pool {self.root} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def clock_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now_ns() / 1e9, UTC)

    def new_chunker(self) -> Chunker:
        return Chunker(self.config.chunker)

    def protect(self, session: Session, ids: Sequence[ChunkId]) -> None:
        with self.marks.lock:
            session.protected.update(ids)

    def end_session(self, session: Session) -> None:
        with self.marks.lock:
            self.marks.open_sessions.discard(session)

    def put_chunks(self, session: Session, chunks: Sequence[framing.EncodedChunk]) -> PutResult:
        """Store chunks in the order documented in chunk_store.py. On return they are
        durable (level FILE) or pending a sync that any commit waits for (FILESYSTEM)."""
        unique = list({c.id: c for c in chunks}.values())
        ids = [c.id for c in unique]
        self.protect(session, ids)  # before the lookup: see gc.py
        present = self.present(ids)
        new = [c for c in unique if c.id not in present]
        strict = self.durability is Durability.FILE
        tmps: list[Path] = []
        try:
            for c in new:
                tmps.append(self.store.write_tmp(c, fsync=strict))
            for c, tmp in zip(new, tmps, strict=True):
                self.store.rename_into_place(c.id, tmp)
            if strict:
                self.store.sync_dirs([c.id for c in new])
        except OSError as err:
            for tmp in tmps:
                tmp.unlink(missing_ok=True)
            where = new[len(tmps)].id.hex() if len(tmps) < len(new) else "a batch"
            raise PoolIOError(f"storing chunk {where} in pool {self.root}", err) from err
        if strict:
            self.index.add((c.id, len(c.frame)) for c in new)
        elif new:
            with self.marks.lock:
                for c in new:
                    self.marks.generation += 1
                    old = self.marks.pending.get(c.id)
                    self.marks.pending[c.id] = (len(c.frame), self.marks.generation)
                    self.marks.pending_bytes += len(c.frame) - (old[0] if old else 0)
                backlog = len(self.marks.pending)
                backlog_bytes = self.marks.pending_bytes
            if backlog >= SYNC_FORCE_CHUNKS or backlog_bytes >= SYNC_FORCE_BYTES:
                self.sync()
            elif backlog_bytes >= SYNC_START_BYTES:
                self._sync_wanted.set()
        return PutResult(
            chunks=len(chunks),
            new_chunks=len(new),
            new_stored_bytes=sum(len(c.frame) for c in new),
        )

    def write_recovery_point(self, rp: RecoveryPoint) -> None:
        """The commit: every chunk the session stored becomes durable first."""
        self.sync()
        path = record_path(self.root, rp)
        try:
            make_dir_durable(path.parent)
            write_atomic(path, rp.to_json())
        except OSError as err:
            raise PoolIOError(
                f"committing recovery point {rp.id} in pool {self.root}", err
            ) from err

    # -- sessions --

    def session(self, data_source: str, *, parent: RecoveryPointId | None = None) -> Session:
        if self._closed:
            raise PoolError(f"storage pool {self.root} is closed")
        s = Session(self, data_source, parent)
        with self.marks.lock:
            self.marks.open_sessions.add(s)
            for watcher in self.marks.watchers:
                watcher.add(s)
        return s

    # -- recovery points --

    def list_recovery_points_sync(self, data_source: str | None = None) -> list[RecoveryPoint]:
        rp_root = self.root / RP_DIR
        if data_source is not None:
            dirs = [rp_root / data_source_dirname(data_source)]
        else:
            dirs = sorted(p for p in rp_root.iterdir() if p.is_dir())
        out: list[RecoveryPoint] = []
        for d in dirs:
            try:
                names = sorted(os.listdir(d))
            except FileNotFoundError:
                continue
            for name in names:
                if name.endswith(".json") and TMP_MARK not in name:
                    try:
                        raw = (d / name).read_bytes()
                    except FileNotFoundError:  # deleted since listed: no longer an RP
                        continue
                    rp = RecoveryPoint.from_json(raw, d / name)
                    if data_source is None or rp.data_source == data_source:
                        out.append(rp)
        out.sort(key=lambda r: (r.created_ns, r.id))
        return out

    async def list_recovery_points(self, data_source: str | None = None) -> list[RecoveryPoint]:
        return await self.run(self.list_recovery_points_sync, data_source)

    def _find_record(self, rp_id: RecoveryPointId | str) -> Path:
        rp_id = parse_recovery_point_id(str(rp_id))
        rp_root = self.root / RP_DIR
        for d in rp_root.iterdir() if rp_root.is_dir() else ():
            candidate = d / f"{rp_id}.json"
            if candidate.is_file():
                return candidate
        raise RecoveryPointNotFoundError(rp_id)

    def get_recovery_point_sync(self, rp_id: RecoveryPointId | str) -> RecoveryPoint:
        path = self._find_record(rp_id)
        return RecoveryPoint.from_json(path.read_bytes(), path)

    async def get_recovery_point(self, rp_id: RecoveryPointId | str) -> RecoveryPoint:
        return await self.run(self.get_recovery_point_sync, rp_id)

    async def delete_recovery_point(self, rp_id: RecoveryPointId | str) -> None:
        """Remove the RP's record; its chunks become garbage for the next GC."""

        def work() -> None:
            path = self._find_record(rp_id)
            path.unlink()
            fsync_dir(path.parent)

        await self.run(work)

    def iter_entries_sync(self, rp: RecoveryPoint) -> Iterator[Entry]:
        def pieces() -> Iterator[bytes]:
            for cid in rp.manifest_chunks:
                try:
                    yield self.store.get(cid)
                except PoolError as err:
                    raise ManifestError(f"manifest of recovery point {rp.id}", str(err)) from err

        count = 0
        for entry in iter_entries(pieces(), f"recovery point {rp.id}"):
            count += 1
            yield entry
        if count != rp.entries:
            raise ManifestError(
                f"manifest of recovery point {rp.id}",
                f"holds {count} entries, the record says {rp.entries}",
            )

    async def iter_entries(self, rp: RecoveryPoint, batch: int = 2000) -> AsyncIterator[Entry]:
        gen = self.iter_entries_sync(rp)
        while True:
            part = await self.run(lambda: list(islice(gen, batch)))
            if not part:
                return
            for entry in part:
                yield entry

    async def find_entry(self, rp: RecoveryPoint, path: bytes) -> Entry:
        """The entry at `path`; for a secondary hardlink, the entry that holds the data."""

        def work() -> Entry:
            groups: dict[int, Entry] = {}
            for entry in self.iter_entries_sync(rp):
                if entry.hardlink_group is not None and entry.hardlink_group not in groups:
                    groups[entry.hardlink_group] = entry
                if entry.path == path:
                    if entry.hardlink_group is not None:
                        return groups[entry.hardlink_group]
                    return entry
            raise KeyError(f"{path!r} is not in recovery point {rp.id}")

        return await self.run(work)

    async def read_file(self, entry: Entry) -> AsyncIterator[bytes]:
        """Stream a file's bytes, chunk by chunk, each verified; the next one prefetched."""
        ids = entry.chunk_ids
        if not ids:
            return
        nxt: asyncio.Future[bytes] = asyncio.ensure_future(self.run(self.store.get, ids[0]))
        try:
            for i in range(len(ids)):
                data = await nxt
                if len(data) != entry.chunk_sizes[i]:
                    raise ManifestError(
                        f"entry {entry.path!r}",
                        f"chunk {ids[i].hex()} holds {len(data)} bytes, the manifest says"
                        f" {entry.chunk_sizes[i]}",
                    )
                if i + 1 < len(ids):
                    nxt = asyncio.ensure_future(self.run(self.store.get, ids[i + 1]))
                yield data
        finally:
            if not nxt.done():
                nxt.cancel()

    async def get_chunk(self, cid: ChunkId) -> bytes:
        return await self.run(self.store.get, cid)

    async def read_chunk_frame(self, cid: ChunkId) -> bytes:
        return await self.run(self.store.read_frame, cid)

    async def missing(self, ids: Sequence[ChunkId]) -> list[ChunkId]:
        """Ids the pool lacks, without protecting the rest (for reports; sessions use theirs)."""

        def work() -> list[ChunkId]:
            present = self.present(ids)
            return [c for c in dict.fromkeys(ids) if c not in present]

        return await self.run(work)

    # -- maintenance --

    async def stats(self) -> PoolStats:
        def work() -> PoolStats:
            self.sync()
            rps = self.list_recovery_points_sync()
            count, stored = self.index.totals()
            usage = self.store.disk_usage()
            return PoolStats(
                recovery_points=len(rps),
                logical_bytes=sum(r.logical_bytes for r in rps),
                stored_bytes=stored,
                chunk_count=count,
                fs_total_bytes=usage.total,
                fs_free_bytes=usage.free,
            )

        return await self.run(work)

    async def rebuild_index(self) -> int:
        def work() -> int:
            self.sync()
            return self._rebuild_index(self.index)

        return await self.run(work)

    async def gc(
        self, safety: SafetyParameters = SAFETY_FULL, *, stop: threading.Event | None = None
    ) -> GcReport:
        """`stop`: set it to end the run early (GcCancelledError, storage_pool/gc.py)."""
        return await self.run(collect, self, safety, stop)

    async def verify(
        self,
        *,
        sample: float | None = None,
        seed: int | None = None,
        repair_from: ChunkSource | None = None,
        quarantine: bool = True,
    ) -> VerifyReport:
        return await verify(
            self, sample=sample, seed=seed, repair_from=repair_from, quarantine=quarantine
        )


def _is_unfinished_skeleton(root: Path) -> bool:
    """True if `root` holds nothing but what an interrupted create() writes."""
    for p in root.iterdir():
        if p.name in (LOCK_NAME, RP_DIR) or p.name.startswith(CONFIG_NAME + TMP_MARK):
            if p.name == RP_DIR and any(p.iterdir()):
                return False
            continue
        if p.name != "chunks" or p.is_symlink() or not p.is_dir():
            return False
        for shard in p.iterdir():
            if len(shard.name) != SHARD_DIGITS or not shard.is_dir() or any(shard.iterdir()):
                return False
    return True


def _lock(root: Path) -> int:
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown holder"
        os.close(fd)
        raise PoolBusyError(root, holder) from err
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
    return fd
