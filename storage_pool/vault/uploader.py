"""Online backup: copy one disk recovery point into the vault through the scratch area.

Write order (each step starts only after the previous one is durable, so a crash at
any point leaves a vault that readers accept and a next job that resumes):

  0. Scratch clean-up: ``.partial`` files are deleted; each complete ``.pack`` file a
     crash left is adopted if the vault already holds it at that size (recorded in the
     location cache), else uploaded once its trailer and every blob authenticate (packs
     are not fsynced in scratch: an OS crash may leave one with lost blocks, which is
     deleted instead, its chunks copied again from the pool); then deleted.
  1. The chunks of the RP (its manifest chunks and every file chunk its entries list)
     that the location cache does not know are read from the pool (verified against
     their ids; a few batches read ahead on the pool's executor), sealed into packs in
     the scratch area (each blob reserved in the `ScratchBudget` before the file grows;
     each pack sealed and written batch by batch on its own thread, pack_build.py, so
     a pack finishes while the next one fills) and uploaded with bounded parallelism.
     Per pack: put (the backend checks the SHA-256) -> head shows the local size ->
     recorded in the location cache -> scratch file deleted -> budget released.
  2. Index segments for every pack no segment covers yet (this job's and adopted ones).
  3. The online-RP manifest, pinning the segments that locate its chunks.
  4. The next catalog generation (the commit), adopting any manifest a crashed job
     left pending; then older catalogs are deleted.

Resume: chunks recorded in step 1 are never uploaded again; a pack uploaded but not
recorded (kill -9 between put and record) is adopted in step 0 from its scratch file.
A pack in the vault that no cache row names (its scratch file lost) is garbage for
vault GC; a rebuilt cache (vault.py) adopts such orphans instead.

Cancellation: set `stop` (checked between batches of chunks), or cancel the task; both
leave the scratch area empty and the vault consistent (steps 2-4 are not started). A
failed or cancelled step 1 ends only after every pack's thread has stopped and its file
is gone (storage_pool/settle.py): a cancellation waits for the pack step running at that moment.
Each pack's scratch bytes are released exactly once, after its file is deleted.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from storage_pool import framing
from storage_pool.ids import ChunkId
from storage_pool.pool import StoragePool
from storage_pool.recovery_point import RecoveryPoint
from storage_pool.settle import settle
from storage_pool.vault.catalog import CatalogEntry
from storage_pool.vault.crypto import OVERHEAD
from storage_pool.vault.format import ObjectKind
from storage_pool.vault.format_errors import TamperedObjectError, VaultFormatError
from storage_pool.vault.index_segment import IndexSegment
from storage_pool.vault.location_cache import LocationCache
from storage_pool.vault.online_manifest import OnlineManifest
from storage_pool.vault.pack import (
    DEFAULT_PACK_SIZE,
    TAIL,
    BlobRef,
    FinishedPack,
    PackReader,
    PackWriter,
    pack_name_of_scratch_file,
    trailer_span,
)
from storage_pool.vault.pack_build import PackBuild
from storage_pool.vault.scratch import ScratchBudget, ScratchTooSmallError, clean_scratch
from storage_pool.vault.vault import Vault

# Upper bounds of what the trailer adds to a pack, reserved with each blob, so the
# reservation always covers the finished file: per row, msgpack array + bin8 id + two
# uint64; per pack, the map, its keys, the seal overhead and the 8-byte tail.
TRAILER_ROW_BYTES = 56
TRAILER_FIXED_BYTES = 64 + OVERHEAD + TAIL.size
READ_BATCH = 32
READ_AHEAD = 3
SEGMENT_MAX_ENTRIES = 200_000
WRITES_QUEUED = 4


class UploadVerifyError(VaultFormatError):
    def __init__(self, name: str, expected: int, found: int | None) -> None:
        super().__init__(
            f"pack {name} was uploaded but the vault shows {found} bytes, not {expected}"
        )
        self.name = name


class OnlineBackupCancelled(Exception):
    """The job stopped at a safe point because it was asked to."""


@dataclass(frozen=True, slots=True)
class OnlineProgress:
    chunks_total: int
    chunks_to_upload: int
    chunks_packed: int
    packs_uploaded: int
    bytes_uploaded: int


@dataclass(frozen=True, slots=True)
class OnlineBackupResult:
    rp_id: str
    manifest_name: str
    sequence: int
    catalog_generation: int
    already_online: bool
    chunks_total: int
    chunks_uploaded: int
    packs_uploaded: int
    packs_adopted: int
    bytes_uploaded: int
    scratch_high_water: int


ProgressFn = Callable[[OnlineProgress], None]


async def rp_chunk_ids(pool: StoragePool, rp: RecoveryPoint) -> list[ChunkId]:
    """Every chunk an RP needs: its manifest chunks, then its file chunks, deduplicated."""
    ids: dict[ChunkId, None] = dict.fromkeys(rp.manifest_chunks)
    async for entry in pool.iter_entries(rp):
        ids.update(dict.fromkeys(entry.chunk_ids))
    return list(ids)


def _read_frames(pool: StoragePool, ids: Sequence[ChunkId]) -> list[tuple[ChunkId, bytes]]:
    out = []
    for cid in ids:
        frame = pool.store.read_frame(cid)
        # A damaged pool chunk must not become the vault's copy of it.
        try:
            framing.decode_verified(frame, cid)
        except framing.FrameError as err:
            raise TamperedObjectError(cid.hex(), "pool chunk", str(err)) from err
        out.append((cid, frame))
    return out


def _file_sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.digest()


def _local_trailer(vault: Vault, path: Path) -> tuple[str, int, tuple[BlobRef, ...]]:
    name = pack_name_of_scratch_file(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        f.seek(max(0, size - TAIL.size))
        span = trailer_span(name, f.read())
        if span > size:
            raise TamperedObjectError(name, ObjectKind.PACK, "trailer longer than the pack")
        f.seek(size - span)
        suffix = f.read()
    return name, size, PackReader(vault.cipher, name).trailer(suffix, pack_size=size)


def _verify_local_blobs(vault: Vault, path: Path, name: str, blobs: Sequence[BlobRef]) -> None:
    """Every blob of a leftover scratch pack authenticates and hashes to its chunk id.

    Scratch packs are written without fsync: after an OS crash a ``.pack`` whose
    trailer survived may still hold blocks that never reached the disk. Such a pack is
    refused here, before it could become the vault's copy of its chunks.
    """
    reader = PackReader(vault.cipher, name)
    with path.open("rb") as f:
        for ref in blobs:
            f.seek(ref.offset)
            reader.blob_frame(ref, f.read(ref.length))


async def _recover_scratch(vault: Vault, cache: LocationCache, scratch_dir: Path) -> int:
    """Step 0; returns how many leftover packs were adopted without an upload."""
    adopted = 0
    for path in await asyncio.to_thread(clean_scratch, scratch_dir):
        try:
            name, size, blobs = await asyncio.to_thread(_local_trailer, vault, path)
            if vault.namer.kind_of(name) is not ObjectKind.PACK:
                raise TamperedObjectError(name, ObjectKind.PACK, "not a pack of this vault")
        except (TamperedObjectError, VaultFormatError, ValueError, OSError):
            await asyncio.to_thread(path.unlink, missing_ok=True)
            continue
        if not await asyncio.to_thread(cache.has_pack, name):
            if await vault.backend.head(name) == size:
                adopted += 1
            else:
                try:
                    await asyncio.to_thread(_verify_local_blobs, vault, path, name, blobs)
                except (TamperedObjectError, VaultFormatError, OSError):
                    await asyncio.to_thread(path.unlink, missing_ok=True)
                    continue
                sha = await asyncio.to_thread(_file_sha256, path)
                await vault.backend.put(name, path, sha256=sha)
                await _verify_size(vault, name, size)
            await asyncio.to_thread(cache.add_pack, name, size, blobs)
        await asyncio.to_thread(path.unlink, missing_ok=True)
    return adopted


async def _verify_size(vault: Vault, name: str, size: int) -> None:
    found = await vault.backend.head(name)
    if found != size:
        raise UploadVerifyError(name, size, found)


class _Packer:
    """Step 1: the producer (pool -> packs) and the bounded uploads (packs -> vault).

    The loop only plans: it reserves scratch for each blob and assigns it to the open
    pack; the pack's own thread (pack_build.py) seals and writes it, and finishing a
    full pack overlaps with filling the next one and with the uploads before it.
    """

    def __init__(
        self,
        vault: Vault,
        cache: LocationCache,
        scratch_dir: Path,
        *,
        budget: ScratchBudget,
        parallelism: int,
        pack_size: int,
    ) -> None:
        self.vault = vault
        self.cache = cache
        self.scratch_dir = scratch_dir
        self.budget = budget
        self.pack_size = pack_size
        self.uploads = asyncio.Semaphore(parallelism)
        self.tasks: set[asyncio.Task[None]] = set()
        # Packs whose file and scratch bytes are not yet released: the one `_release`
        # that pops a pack from here deletes its file, then releases its bytes. An upload
        # task cancelled before its first step never runs its finally, so abort releases
        # what is left.
        self.unreleased: dict[str, tuple[PackBuild, int]] = {}
        self.in_flight = 0
        self.build: PackBuild | None = None
        self.reserved = 0  # reserved for the open pack (pending blobs included)
        # Blobs reserved for the open pack but not yet handed to its thread, and the
        # size the pack will have with them (sealed), which decides when it is full.
        self.pending: list[tuple[ChunkId, bytes]] = []
        self.planned_size = 0
        # Batches handed to pack threads and not yet written: they hold their frames in
        # memory, so the producer waits once WRITES_QUEUED are outstanding.
        self.writes: deque[asyncio.Future[int]] = deque()
        self.failure: BaseException | None = None
        self.packs_uploaded = 0
        self.bytes_uploaded = 0
        self.chunks_packed = 0
        self.report: Callable[[], None] = lambda: None

    async def add_batch(self, frames: Sequence[tuple[ChunkId, bytes]]) -> None:
        """Reserve `frames` and queue them on the open pack, shipping each pack as it fills.

        Reservations are taken here, on the loop, for every blob before the pack's
        thread grows the file by it; the blobs reserved so far go to that thread as
        one batch (with `finish` when the pack is full), and the loop does not wait.
        """
        for cid, frame in frames:
            blob = len(frame) + OVERHEAD + TRAILER_ROW_BYTES
            while True:
                self.raise_failure()
                need = blob + (TRAILER_FIXED_BYTES if self.build is None else 0)
                if need > self.budget.limit:
                    raise ScratchTooSmallError(need, self.budget.limit)
                if self.budget.try_reserve(need):
                    break
                if await self.budget.reserve(need, stuck=lambda: self.in_flight == 0):
                    break
                # Nothing in flight can release space: ship the open pack.
                if self.build is None:
                    raise ScratchTooSmallError(need, self.budget.limit)
                await self.ship()
            self.reserved += need  # counted at once: abort releases it, pack or not
            if self.build is None:
                name = self.vault.namer.new_name(ObjectKind.PACK)
                self.build = PackBuild(name, functools.partial(self._new_writer, name))
                self.planned_size = 0
            self.pending.append((cid, frame))
            self.planned_size += PackWriter.sealed_size(len(frame))
            if self.planned_size >= self.pack_size:
                await self.ship()
        await self.flush()

    def _new_writer(self, name: str) -> PackWriter:
        return PackWriter(
            self.vault.cipher, name, self.scratch_dir, target_size=self.pack_size, fsync=False
        )

    async def flush(self) -> None:
        """Hand the reserved, not yet queued blobs to the open pack's thread."""
        if self.build is None or not self.pending:
            return
        items, self.pending = self.pending, []
        await self._queue(self.build.add_many(items))

    async def _queue(self, write: asyncio.Future[int]) -> None:
        def counted(done: asyncio.Future[int]) -> None:
            if not done.cancelled() and done.exception() is None:
                self.chunks_packed += done.result()

        write.add_done_callback(counted)
        self.writes.append(write)
        while self.writes and (self.writes[0].done() or len(self.writes) > WRITES_QUEUED):
            oldest = self.writes.popleft()
            await asyncio.wait([oldest])  # never cancels it: the pack's steps stay in order
            if not oldest.cancelled() and (err := oldest.exception()) is not None:
                raise err

    async def ship(self) -> None:
        """Queue the pending blobs, then `finish`, on the open pack; start its upload."""
        build, reserved, items = self.build, self.reserved, self.pending
        if build is None:
            return
        self.build, self.reserved, self.pending = None, 0, []
        self.in_flight += 1
        self.unreleased[build.name] = (build, reserved)
        write = build.add_many(items) if items else None
        finished = build.finish()
        task = asyncio.create_task(self._upload(build, finished, reserved))
        self.tasks.add(task)
        task.add_done_callback(self._done)
        if write is not None:
            await self._queue(write)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self.failure is None:
            self.failure = task.exception()

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def _upload(
        self, build: PackBuild, finished: asyncio.Future[FinishedPack], reserved: int
    ) -> None:
        try:
            # Shielded: cancelling this task must not cancel the pack thread's step.
            pack = await asyncio.shield(finished)
            async with self.uploads:
                await self.vault.backend.put(pack.name, pack.path, sha256=pack.sha256)
                await _verify_size(self.vault, pack.name, pack.size)
                await asyncio.to_thread(self.cache.add_pack, pack.name, pack.size, pack.blobs)
                self.packs_uploaded += 1
                self.bytes_uploaded += pack.size
                self.report()  # before the release: scratch is at its fullest here
        finally:
            # Recorded or failed, the file goes: a failed job leaves scratch empty.
            await self._release(build)

    async def _release(self, build: PackBuild) -> None:
        entry = self.unreleased.pop(build.name, None)
        if entry is None:
            return
        # The file goes before its bytes are released (disk usage <= in_use), also when
        # the caller is cancelled meanwhile: `settle` waits for the discard (which waits
        # for the pack's running step) instead of letting the release run ahead of it.
        try:
            await settle(asyncio.to_thread(build.discard), name=f"discard-{build.name}")
        finally:
            self.in_flight -= 1
            self.budget.release(entry[1])

    async def drain(self) -> None:
        await self.ship()
        while self.tasks:
            await asyncio.wait(set(self.tasks))
            self.raise_failure()
        self.raise_failure()

    async def abort(self) -> None:
        """Stop every upload and delete every pack; runs to its end even if cancelled."""
        await settle(self._abort(), name="online-backup-abort")

    async def _abort(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        build, reserved = self.build, self.reserved
        self.build, self.reserved, self.pending = None, 0, []
        if build is not None:
            self.unreleased[build.name] = (build, reserved)
            self.in_flight += 1
        elif reserved:
            self.budget.release(reserved)
        if self.tasks:
            await asyncio.wait(set(self.tasks))
        for left, _ in list(self.unreleased.values()):
            await self._release(left)


async def _pack_chunks(
    pool: StoragePool,
    missing: Sequence[ChunkId],
    packer: _Packer,
    *,
    stop: asyncio.Event | None,
    rp_id: str,
    report: Callable[[], None],
) -> None:
    """Step 1: read `missing` from the pool and pack and upload it (or abort on failure)."""
    # Pool reads (read + verify, the costliest step) run READ_AHEAD batches ahead on
    # the pool's executor, overlapping each other and the sealing of the batch before.
    reads: deque[asyncio.Future[list[tuple[ChunkId, bytes]]]] = deque()
    batches = iter(range(0, len(missing), READ_BATCH))

    def read_ahead() -> None:
        while len(reads) < READ_AHEAD and (i := next(batches, None)) is not None:
            reads.append(
                asyncio.ensure_future(pool.run(_read_frames, pool, missing[i : i + READ_BATCH]))
            )

    try:
        read_ahead()
        while reads:
            if stop is not None and stop.is_set():
                raise OnlineBackupCancelled(f"online backup of {rp_id} stopped")
            frames = await reads.popleft()
            read_ahead()
            await packer.add_batch(frames)
            report()
        await packer.drain()
    except BaseException:
        for read in reads:
            read.cancel()
        # Scratch first: a cancellation while waiting for the reads must not skip it.
        await packer.abort()
        await asyncio.gather(*reads, return_exceptions=True)
        raise


async def _write_segments(vault: Vault, cache: LocationCache) -> int:
    """Step 2: index segments for every pack the cache holds without one."""
    packs = await asyncio.to_thread(cache.unindexed_packs)
    written = 0
    group: list[tuple[str, list[BlobRef]]] = []
    entries = 0

    async def flush() -> None:
        nonlocal group, entries, written
        if not group:
            return
        segment = IndexSegment.of_packs(group)
        name = vault.namer.new_name(ObjectKind.INDEX)
        sealed = await asyncio.to_thread(segment.seal, vault.cipher, name)
        await vault.put_sealed(name, sealed)
        digest = hashlib.sha256(sealed).digest()
        await asyncio.to_thread(cache.add_segment, name, digest, [p for p, _ in group])
        written += 1
        group, entries = [], 0

    for pack in packs:
        blobs = await asyncio.to_thread(cache.blobs_of, pack)
        group.append((pack, list(blobs)))
        entries += len(blobs)
        if entries >= SEGMENT_MAX_ENTRIES:
            await flush()
    await flush()
    return written


async def copy_recovery_point(
    pool: StoragePool,
    rp: RecoveryPoint,
    vault: Vault,
    scratch_dir: Path,
    budget: ScratchBudget,
    *,
    parallelism: int = 4,
    pack_size: int = DEFAULT_PACK_SIZE,
    progress: ProgressFn | None = None,
    stop: asyncio.Event | None = None,
    agent: str = "",
    now_ns: Callable[[], int] = time.time_ns,
) -> OnlineBackupResult:
    """Copy `rp` from `pool` into `vault` (write order in the module docstring)."""
    if parallelism < 1:
        raise ValueError("parallelism must be at least 1")
    cache = vault.require_cache()
    adopted = await _recover_scratch(vault, cache, scratch_dir)

    listing = await vault.scan()
    head_name, head = await vault.head(listing)
    pending = await vault.pending(listing, head)
    for entry in head.live():
        if entry.rp_id == rp.id and entry.data_source == rp.data_source:
            return OnlineBackupResult(
                rp.id, entry.name, entry.sequence, head.generation, True,
                0, 0, 0, adopted, 0, budget.high_water,
            )  # fmt: skip

    ids = await rp_chunk_ids(pool, rp)
    missing = await asyncio.to_thread(cache.missing, ids)
    packer = _Packer(
        vault, cache, scratch_dir, budget=budget, parallelism=parallelism, pack_size=pack_size
    )

    def report() -> None:
        if progress is not None:
            progress(
                OnlineProgress(
                    len(ids),
                    len(missing),
                    packer.chunks_packed,
                    packer.packs_uploaded,
                    packer.bytes_uploaded,
                )
            )

    packer.report = report
    await _pack_chunks(pool, missing, packer, stop=stop, rp_id=rp.id, report=report)
    report()
    if stop is not None and stop.is_set():
        raise OnlineBackupCancelled(f"online backup of {rp.id} stopped before its manifest")

    await _write_segments(vault, cache)
    segments = await asyncio.to_thread(cache.segments_for, ids)

    ours = next(
        (p for p in pending if p.manifest.recovery_point.id == rp.id),
        None,
    )
    if ours is None:
        sequence = max([head.high_sequence, *(p.manifest.sequence for p in pending)]) + 1
        manifest = OnlineManifest(
            sequence=sequence,
            created_ns=now_ns(),
            data_source_id=rp.data_source,
            agent=agent,
            recovery_point=rp,
            index_segments=tuple(segments),
        )
        name = vault.namer.new_name(ObjectKind.MANIFEST)
        sealed = await asyncio.to_thread(manifest.seal, vault.cipher, name)
        await vault.put_sealed(name, sealed)
        await asyncio.to_thread(cache.add_manifest, name, sequence)
        new_entries = [p.entry() for p in pending] + [CatalogEntry.of(name, manifest, sealed)]
    else:
        name, sequence = ours.name, ours.manifest.sequence
        new_entries = [p.entry() for p in pending]
    _, catalog = await vault.commit_catalog(listing, head_name, head, new_entries, now_ns=now_ns())
    return OnlineBackupResult(
        rp_id=rp.id,
        manifest_name=name,
        sequence=sequence,
        catalog_generation=catalog.generation,
        already_online=False,
        chunks_total=len(ids),
        chunks_uploaded=len(missing),
        packs_uploaded=packer.packs_uploaded,
        packs_adopted=adopted,
        bytes_uploaded=packer.bytes_uploaded,
        scratch_high_water=budget.high_water,
    )
