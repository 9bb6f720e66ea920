"""Backup sessions: the only way chunks and recovery points enter the pool.

A session protects every chunk it touches from garbage collection from the moment it
asks about it (see gc.py), so "present" answers stay true until the session ends.
Commit order: every file chunk is durable (put) -> the manifest is cut into chunks and
put -> the recovery-point record is written atomically. Before that last step nothing of
the session is visible; a session that never commits leaves only unreferenced chunks,
which GC collects.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from storage_pool import framing
from storage_pool.errors import IntegrityError, SessionError
from storage_pool.ids import ChunkId, RecoveryPointId, new_recovery_point_id
from storage_pool.manifest import Entry, EntryType, ManifestWriter, entry_from_wire
from storage_pool.recovery_point import RecoveryPoint, check_data_source

if TYPE_CHECKING:
    from storage_pool.pool import StoragePool


@dataclass(slots=True)
class PutResult:
    chunks: int = 0
    new_chunks: int = 0
    new_stored_bytes: int = 0

    def add(self, other: PutResult) -> None:
        self.chunks += other.chunks
        self.new_chunks += other.new_chunks
        self.new_stored_bytes += other.new_stored_bytes


@dataclass(slots=True)
class SessionStats:
    entries: int = 0
    files: int = 0
    logical_bytes: int = 0
    put: PutResult = field(default_factory=PutResult)


class Session:
    """One backup of one data source. Use `async with pool.session(...)`: leaving the block
    without commit() aborts."""

    def __init__(self, pool: StoragePool, data_source: str, parent: RecoveryPointId | None) -> None:
        self.pool = pool
        self.data_source = check_data_source(data_source)
        self.parent = parent
        self.id = secrets.token_hex(8)
        self.stats = SessionStats()
        self.protected: set[ChunkId] = set()  # guarded by pool.marks.lock
        self._confirmed: set[ChunkId] = set()
        self._sizes: dict[ChunkId, int] = {}  # plaintext sizes of the chunks put here
        self._lock = threading.Lock()
        self._writer = ManifestWriter(pool.new_chunker(), data_source)
        self._last_key: list[bytes] | None = None
        self._manifest_chunks: list[ChunkId] = []
        self.state = "open"
        self.recovery_point: RecoveryPoint | None = None

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.state == "open":
            self.abort()

    def _check_open(self) -> None:
        if self.state != "open":
            raise SessionError(f"session {self.id} for {self.data_source} is {self.state}")

    # -- sync core: called from worker threads (ingest) or through the async wrappers --

    def missing_sync(self, ids: Sequence[ChunkId]) -> list[ChunkId]:
        """Which of `ids` the pool lacks. The present ones stay protected and usable."""
        self._check_open()
        self.pool.protect(self, ids)
        present = self.pool.present(ids)
        with self._lock:
            self._confirmed.update(present)
        return [cid for cid in dict.fromkeys(ids) if cid not in present]

    def put_sync(self, chunks: Sequence[framing.EncodedChunk], *, verify: bool) -> PutResult:
        """Store chunks durably (idempotent). With `verify`, each frame is decoded and its
        plaintext hashed against its id first: use it for anything from outside."""
        self._check_open()
        if verify:
            for c in chunks:
                try:
                    framing.decode_verified(c.frame, c.id)
                except framing.FrameError as err:
                    raise IntegrityError(f"uploaded chunk {c.id.hex()}", str(err)) from err
        result = self.pool.put_chunks(self, chunks)
        with self._lock:
            self._confirmed.update(c.id for c in chunks)
            self._sizes.update((c.id, c.size) for c in chunks)
            self.stats.put.add(result)
        return result

    def add_entries_sync(self, entries: Iterable[Entry]) -> None:
        self._check_open()
        for entry in entries:
            # What a reader will accept is what a writer may commit: an entry that
            # entry_from_wire would refuse would make the RP unreadable and stop GC.
            try:
                entry_from_wire(entry.to_wire())
            except ValueError as err:
                raise SessionError(f"entry {entry.path!r} is invalid: {err}") from err
            key = entry.path.split(b"/")
            if self._last_key is not None and key <= self._last_key:
                raise SessionError(
                    f"entry {entry.path!r} is out of order: entries must come depth-first"
                    " with names sorted bytewise"
                )
            with self._lock:
                unknown = [c for c in entry.chunk_ids if c not in self._confirmed]
                wrong = [
                    (c, n)
                    for c, n in zip(entry.chunk_ids, entry.chunk_sizes, strict=True)
                    if self._sizes.get(c, n) != n
                ]
            if wrong:
                c, n = wrong[0]
                raise SessionError(
                    f"entry {entry.path!r} says chunk {c.hex()} holds {n} bytes; it holds"
                    f" {self._sizes[c]}"
                )
            if unknown:
                raise SessionError(
                    f"entry {entry.path!r} references chunk {unknown[0].hex()} that this"
                    " session neither stored nor found in the pool"
                )
            self._last_key = key
            pieces = self._writer.add(entry)
            self.stats.entries += 1
            if entry.type is EntryType.FILE:
                self.stats.files += 1
                self.stats.logical_bytes += sum(entry.chunk_sizes)
            if pieces:
                self._put_manifest(pieces)

    def _put_manifest(self, pieces: list[bytes]) -> None:
        level = self.pool.config.compression_level
        encoded = [framing.encode_chunk(p, level) for p in pieces]
        self.put_sync(encoded, verify=False)
        self._manifest_chunks.extend(c.id for c in encoded)

    def commit_sync(self, labels: dict[str, str] | None = None) -> RecoveryPoint:
        self._check_open()
        self._put_manifest(self._writer.finish())
        created = self.pool.now_ns()
        rp = RecoveryPoint(
            id=new_recovery_point_id(self.pool.clock_datetime()),
            data_source=self.data_source,
            created_ns=created,
            manifest_chunks=tuple(self._manifest_chunks),
            manifest_bytes=self._writer.size,
            entries=self.stats.entries,
            files=self.stats.files,
            logical_bytes=self.stats.logical_bytes,
            parent=self.parent,
            labels=dict(labels or {}),
        )
        self.pool.write_recovery_point(rp)  # the commit point
        self.state = "committed"
        self.recovery_point = rp
        self.pool.end_session(self)
        return rp

    def abort(self) -> None:
        if self.state == "open":
            self.state = "aborted"
            self.pool.end_session(self)

    # -- async API --

    async def missing(self, ids: Sequence[ChunkId]) -> list[ChunkId]:
        return await self.pool.run(self.missing_sync, list(ids))

    async def put(
        self, chunks: Sequence[framing.EncodedChunk], *, verify: bool = True
    ) -> PutResult:
        return await self.pool.run(lambda: self.put_sync(chunks, verify=verify))

    async def put_data(self, datas: Sequence[bytes]) -> list[ChunkId]:
        """Frame and store plaintext chunks; returns their ids in order."""
        level = self.pool.config.compression_level

        def work() -> list[ChunkId]:
            encoded = [framing.encode_chunk(d, level) for d in datas]
            self.put_sync(encoded, verify=False)
            return [c.id for c in encoded]

        return await self.pool.run(work)

    async def add_entries(self, entries: Iterable[Entry]) -> None:
        batch = list(entries)
        for i in range(0, len(batch), 1000):
            part = list(itertools.islice(batch, i, i + 1000))
            await self.pool.run(self.add_entries_sync, part)

    async def commit(self, labels: dict[str, str] | None = None) -> RecoveryPoint:
        return await self.pool.run(self.commit_sync, labels)
