"""Vault GC: online retention (soft delete), undelete, purge after the grace, and repack.

One writer at a time: the server runs online backups and these operations for one vault
one after the other, never together (a pack uploaded by a running job is unreferenced
until its manifest is written, and purge would take it).

Every change to which manifests exist goes through a catalog commit (catalog.py): the
new generation is written, then older catalogs are deleted. Each operation first
normalises the head it read: manifests a crashed writer left pending are adopted, and
when several live manifests hold the same RP of a data source (a crashed repack, whose
pending rewrite a backup job adopted) the one with the highest sequence stays live and
the others are soft-deleted.

What a manifest references (the mark): exactly what `VaultReader` reads for it. Its
pinned index segments are merged in pinned order, the first row of a chunk winning; its
pool manifest chunks are read through that map and decoded to list its file chunks; the
packs the map sends those chunks to are referenced, and so are all its pinned segments.
If that cannot be done precisely (a pack or segment it needs is gone or damaged), every
pack its pinned segments name counts as referenced. A listed manifest that does not
authenticate stops GC (`UnreadableManifestError`): what it needs is unknown.

`apply_retention` (soft delete): one commit marking the manifests the caller does not
keep with ``deleted_ns``; nothing is removed. A soft-deleted RP lists as DELETED and
restores like a live one. `undelete` clears ``deleted_ns`` with one commit, while its
bytes are there.

`purge` write order:
  1. delete the manifest objects of entries soft-deleted at least `grace_ns` ago;
  2. commit a catalog without those entries;
  3. mark from every manifest the catalog still lists (live and soft-deleted);
  4. delete unreferenced packs, then unreferenced index segments;
  5. forget them in the location cache, and stop it using kept segments that name a
     deleted pack (a later manifest pinning one could resolve a chunk to it), so no
     later backup relies on them.
Older catalogs a crashed commit left are deleted too.
A crash after 1 leaves soft-deleted entries whose manifest is missing (listed as
missing, already deleted); after 2, unreferenced objects that the next purge deletes.
Manifests are deleted before the commit because an unlisted manifest with an old
sequence is what a rollback looks like: readers would refuse it as one.

`repack` write order:
  1. live bytes per pack: blobs that live manifests read from it; packs with some live
     bytes but less than `threshold` of their size are rewritten;
  2. their live blobs are read (each verified), sealed into new packs in the scratch
     area (bounded by the `ScratchBudget`), uploaded and checked, one pack at a time;
  3. an index segment locating the new packs;
  4. for every live manifest reading from a rewritten pack, a new manifest for the same
     RP (next sequences) pinning the new segment first, then its old segments;
  5. the commit: the new manifests live, the ones they replace soft-deleted;
  6. the location cache forgets the rewritten packs and records the new ones.
The rewritten packs are then referenced only by the soft-deleted manifests, so a reader
holding the old catalog finds every byte for `grace_ns`, after which purge removes
them. A crash before 4 leaves unreferenced packs (purge takes them); between 4 and 5,
pending manifests that duplicate live ones, adopted by the next normalisation exactly as
the commit would have; after 5, a cache that still prefers the old packs, which only
keeps them alive until a later repack rewrites what reads them. Repeated runs
converge: after a repack no live manifest reads from a rewritten pack.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from storage_pool import framing
from storage_pool.errors import ManifestError
from storage_pool.ids import ChunkId, RecoveryPointId
from storage_pool.manifest import iter_entries
from storage_pool.vault.backend import NotFound
from storage_pool.vault.catalog import Catalog, CatalogEntry, ManifestStatus
from storage_pool.vault.crypto import OVERHEAD
from storage_pool.vault.format import ObjectKind
from storage_pool.vault.format_errors import TamperedObjectError, VaultFormatError
from storage_pool.vault.gfs import MAX_ONLINE_RPS
from storage_pool.vault.index_segment import ChunkLocation, IndexSegment
from storage_pool.vault.online_manifest import OnlineManifest, SegmentRef
from storage_pool.vault.pack import DEFAULT_PACK_SIZE, BlobRef, PackReader, PackWriter
from storage_pool.vault.reader import VaultReader
from storage_pool.vault.scratch import ScratchBudget, ScratchTooSmallError, clean_scratch
from storage_pool.vault.uploader import (
    SEGMENT_MAX_ENTRIES,
    TRAILER_FIXED_BYTES,
    TRAILER_ROW_BYTES,
    UploadVerifyError,
)
from storage_pool.vault.vault import (
    FETCH_PARALLELISM,
    PendingManifest,
    Vault,
    VaultListing,
    gather_bounded,
)

GRACE_NS = 14 * 24 * 3600 * 1_000_000_000
_Written = tuple[str, int, tuple[BlobRef, ...]]  # a new pack: name, size, blobs


class VaultGcError(VaultFormatError):
    """Root of the errors of retention, undelete, purge and repack."""


class UnreadableManifestError(VaultGcError):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(
            f"online RP manifest {name} is listed in the catalog but cannot be read ({reason});"
            " vault GC deletes nothing while what it references is unknown"
        )
        self.name = name


class RetentionError(VaultGcError, ValueError):
    """A retention request that would break a rule (delete every RP, keep too many)."""


class UndeleteError(VaultGcError, ValueError):
    """The manifest cannot be undeleted: unknown, not deleted, purged, or already online."""


@dataclass(frozen=True, slots=True)
class RetentionResult:
    catalog_generation: int
    deleted: tuple[str, ...]  # manifest names soft-deleted by this call


@dataclass(frozen=True, slots=True)
class PurgeResult:
    catalog_generation: int
    manifests_purged: tuple[str, ...]
    packs_deleted: tuple[str, ...]
    segments_deleted: tuple[str, ...]
    bytes_freed: int


@dataclass(frozen=True, slots=True)
class RepackResult:
    catalog_generation: int
    packs_rewritten: tuple[str, ...]
    packs_written: tuple[str, ...]
    bytes_copied: int
    manifests_rewritten: tuple[str, ...]  # the new manifests


# --------------------------------------------------------------------------- catalog


@dataclass(slots=True)
class _State:
    listing: VaultListing
    head_name: str
    head: Catalog
    entries: list[CatalogEntry]  # normalised: pending adopted, duplicate live RPs resolved
    changed: bool


async def _load(vault: Vault, now_ns: int) -> _State:
    listing = await vault.scan()
    head_name, head = await vault.head(listing)
    pending = await vault.pending(listing, head)
    entries, changed = _normalised(head, pending, now_ns)
    return _State(listing, head_name, head, entries, changed)


def _normalised(
    head: Catalog, pending: Iterable[PendingManifest], now_ns: int
) -> tuple[list[CatalogEntry], bool]:
    entries = list(head.entries) + [p.entry() for p in pending]
    changed = len(entries) != len(head.entries)
    newest: dict[tuple[str, str], int] = {}
    for e in entries:
        if e.deleted_ns is None:
            key = (e.data_source, e.rp_id)
            newest[key] = max(newest.get(key, e.sequence), e.sequence)
    out = []
    for e in entries:
        stale = e.deleted_ns is None and e.sequence != newest[(e.data_source, e.rp_id)]
        out.append(replace(e, deleted_ns=now_ns) if stale else e)
        changed = changed or stale
    return out, changed


async def _commit(
    vault: Vault, state: _State, entries: Iterable[CatalogEntry], now_ns: int
) -> Catalog:
    """Write the next catalog generation (the commit), then delete the older ones."""
    kept = tuple(entries)
    high = max([state.head.high_sequence, *(e.sequence for e in kept)])
    catalog = Catalog(state.head.generation + 1, high, now_ns, kept)
    name = vault.namer.new_name(ObjectKind.CATALOG)
    sealed = await asyncio.to_thread(catalog.seal, vault.cipher, name)
    await vault.put_sealed(name, sealed)
    if vault.cache is not None:
        await asyncio.to_thread(vault.cache.see_generation, catalog.generation)
    for old in {*state.listing.catalogs, state.head_name} - {name, ""}:
        await vault.backend.delete(old)
    state.head_name, state.head, state.entries, state.changed = name, catalog, list(kept), False
    return catalog


# --------------------------------------------------------------------------- retention


async def live_rps_by_source(vault: Vault) -> dict[str, list[tuple[RecoveryPointId, int]]]:
    """Live (and pending) online RPs per data source as (rp id, RP created_ns): the input
    of `gfs.select_keep`, whose result (rp ids) goes to `apply_retention`."""
    listing = await VaultReader(vault).list_online_rps()
    out: dict[str, dict[RecoveryPointId, int]] = {}
    for orp in listing.rps:
        if orp.status is not ManifestStatus.DELETED:
            out.setdefault(orp.data_source, {})[orp.id] = orp.recovery_point.created_ns
    return {ds: sorted(rps.items()) for ds, rps in out.items()}


async def apply_retention(
    vault: Vault, keep_by_source: Mapping[str, Collection[str]], *, now_ns: int
) -> RetentionResult:
    """Soft-delete the live manifests of each data source in `keep_by_source` whose RP id
    is not in its keep set (one commit). Data sources not named are left alone.

    RetentionError when a keep set would delete every live RP of its data source or
    names more than `MAX_ONLINE_RPS` RPs."""
    state = await _load(vault, now_ns)
    doomed: set[str] = set()
    for ds, keep in keep_by_source.items():
        keep_ids = set(keep)
        if len(keep_ids) > MAX_ONLINE_RPS:
            raise RetentionError(
                f"retention of {ds} keeps {len(keep_ids)} online RPs; at most"
                f" {MAX_ONLINE_RPS} per data source are allowed"
            )
        live = [e for e in state.entries if e.data_source == ds and e.deleted_ns is None]
        if live and not any(e.rp_id in keep_ids for e in live):
            raise RetentionError(
                f"retention would delete all {len(live)} online RPs of {ds}; the newest"
                " is always kept"
            )
        doomed.update(e.name for e in live if e.rp_id not in keep_ids)
    if not doomed and not state.changed:
        return RetentionResult(state.head.generation, ())
    entries = [replace(e, deleted_ns=now_ns) if e.name in doomed else e for e in state.entries]
    catalog = await _commit(vault, state, entries, now_ns)
    return RetentionResult(catalog.generation, tuple(sorted(doomed)))


async def undelete(vault: Vault, manifest_name: str, *, now_ns: int) -> int:
    """Make a soft-deleted manifest live again (one commit); the new catalog generation."""
    state = await _load(vault, now_ns)
    entry = next((e for e in state.entries if e.name == manifest_name), None)
    if entry is None:
        raise UndeleteError(f"online RP manifest {manifest_name} is not in the catalog (purged?)")
    if entry.deleted_ns is None:
        raise UndeleteError(f"online RP manifest {manifest_name} is not deleted")
    if manifest_name not in state.listing.manifests:
        raise UndeleteError(f"online RP manifest {manifest_name} was already purged")
    twin = next(
        (
            e
            for e in state.entries
            if e.deleted_ns is None and (e.data_source, e.rp_id) == (entry.data_source, entry.rp_id)
        ),
        None,
    )
    if twin is not None:
        raise UndeleteError(
            f"RP {entry.rp_id} of {entry.data_source} is already online as manifest {twin.name}"
        )
    entries = [replace(e, deleted_ns=None) if e.name == manifest_name else e for e in state.entries]
    return (await _commit(vault, state, entries, now_ns)).generation


# --------------------------------------------------------------------------- mark


@dataclass(slots=True)
class _Uses:
    manifest: OnlineManifest
    locations: dict[ChunkId, ChunkLocation]  # what a reader of this manifest reads from
    segments: set[str]

    @property
    def packs(self) -> set[str]:
        return {loc.pack_name for loc in self.locations.values()}


@dataclass(slots=True)
class _Marker:
    vault: Vault
    segments: dict[str, IndexSegment | None] = field(default_factory=dict)

    async def segment(self, ref: SegmentRef) -> IndexSegment | None:
        if ref.name not in self.segments:
            try:
                data = await self.vault.backend.get(ref.name)
                ref.check(data)
                opened = await asyncio.to_thread(
                    IndexSegment.open, self.vault.cipher, ref.name, data
                )
            except (NotFound, TamperedObjectError, VaultFormatError):
                opened = None
            self.segments[ref.name] = opened
        return self.segments[ref.name]

    async def uses(self, entry: CatalogEntry) -> _Uses | None:
        """What `entry`'s manifest reads; None when the manifest object is gone."""
        try:
            manifest, sealed = await self.vault.open_manifest(entry.name)
        except NotFound:
            return None
        except (TamperedObjectError, VaultFormatError) as err:
            raise UnreadableManifestError(entry.name, str(err)) from err
        if hashlib.sha256(sealed).digest() != entry.sha256:
            raise UnreadableManifestError(entry.name, "differs from the one the catalog lists")
        resolved: dict[ChunkId, ChunkLocation] = {}
        for ref in manifest.index_segments:
            segment = await self.segment(ref)
            for loc in segment.locations if segment is not None else ():
                resolved.setdefault(loc.chunk_id, loc)
        pinned = {ref.name for ref in manifest.index_segments}
        ids = await self._chunk_ids(manifest, resolved)
        if ids is None:  # cannot list its chunks: everything its segments name
            return _Uses(manifest, resolved, pinned)
        return _Uses(manifest, {c: resolved[c] for c in ids if c in resolved}, pinned)

    async def _chunk_ids(
        self, manifest: OnlineManifest, resolved: Mapping[ChunkId, ChunkLocation]
    ) -> list[ChunkId] | None:
        rp = manifest.recovery_point
        pieces: list[bytes] = []
        for cid in rp.manifest_chunks:
            loc = resolved.get(cid)
            if loc is None:
                return None
            try:
                data = await self.vault.backend.get_range(
                    loc.pack_name, loc.blob.offset, loc.blob.length
                )
                reader = PackReader(self.vault.cipher, loc.pack_name)
                frame = await asyncio.to_thread(reader.blob_frame, loc.blob, data)
            except (NotFound, TamperedObjectError):
                return None
            pieces.append(await asyncio.to_thread(framing.decode, frame))

        def decode() -> list[ChunkId]:
            ids: dict[ChunkId, None] = dict.fromkeys(rp.manifest_chunks)
            for item in iter_entries(pieces, f"online recovery point {rp.id}"):
                ids.update(dict.fromkeys(item.chunk_ids))
            return list(ids)

        try:
            return await asyncio.to_thread(decode)
        except ManifestError:
            return None


async def _mark(vault: Vault, entries: Iterable[CatalogEntry]) -> tuple[dict[str, _Uses], _Marker]:
    marker = _Marker(vault)
    listed = list(entries)
    found = await gather_bounded(
        [functools.partial(marker.uses, e) for e in listed], FETCH_PARALLELISM
    )
    return {e.name: u for e, u in zip(listed, found, strict=True) if u is not None}, marker


def _naming(marker: _Marker, packs: Collection[str]) -> list[str]:
    """The loaded segments with a row in one of `packs`. The cache must stop using them:
    a later manifest pinning one could resolve a chunk to such a pack (first row wins)."""
    return sorted(
        name
        for name, segment in marker.segments.items()
        if segment is not None and any(loc.pack_name in packs for loc in segment.locations)
    )


# --------------------------------------------------------------------------- purge


async def purge(vault: Vault, *, now_ns: int, grace_ns: int = GRACE_NS) -> PurgeResult:
    """Remove what was soft-deleted at least `grace_ns` ago and every pack and index
    segment no remaining manifest references (write order in the module docstring)."""
    state = await _load(vault, now_ns)
    expired = {
        e.name
        for e in state.entries
        if e.deleted_ns is not None and e.deleted_ns + grace_ns <= now_ns
    }
    for name in sorted(expired):
        await vault.backend.delete(name)
    if expired or state.changed:
        await _commit(vault, state, [e for e in state.entries if e.name not in expired], now_ns)
    else:  # older catalogs a commit cut short left behind
        for name in sorted(set(state.listing.catalogs) - {state.head_name}):
            await vault.backend.delete(name)
    uses, marker = await _mark(vault, state.entries)
    packs = set().union(*(u.packs for u in uses.values()))
    segments = set().union(*(u.segments for u in uses.values()))
    dead_packs = sorted(p for p in state.listing.packs if p not in packs)
    dead_segments = sorted(s for s in state.listing.segments if s not in segments)
    for name in dead_packs:
        await vault.backend.delete(name)
    for name in dead_segments:
        await vault.backend.delete(name)
    if vault.cache is not None:
        stale = _naming(marker, set(dead_packs))
        await asyncio.to_thread(vault.cache.forget, dead_packs, [*dead_segments, *stale])
    return PurgeResult(
        catalog_generation=state.head.generation,
        manifests_purged=tuple(sorted(expired)),
        packs_deleted=tuple(dead_packs),
        segments_deleted=tuple(dead_segments),
        bytes_freed=sum(state.listing.packs[p] for p in dead_packs)
        + sum(state.listing.segments[s] for s in dead_segments),
    )


# --------------------------------------------------------------------------- repack


@dataclass(slots=True)
class _Rewriter:
    """Step 2: live blobs into new packs, one pack in the scratch area at a time."""

    vault: Vault
    scratch_dir: Path
    budget: ScratchBudget
    pack_size: int
    writer: PackWriter | None = None
    reserved: int = 0
    written: list[_Written] = field(default_factory=list)
    bytes_copied: int = 0

    async def add(self, cid: ChunkId, frame: bytes) -> None:
        row = len(frame) + OVERHEAD + TRAILER_ROW_BYTES
        need = row + (TRAILER_FIXED_BYTES if self.writer is None else 0)
        if not self.budget.try_reserve(need):
            await self.ship()  # releases the pack being written; nothing else is in flight
            need = row + TRAILER_FIXED_BYTES
            if not self.budget.try_reserve(need):
                raise ScratchTooSmallError(need, self.budget.free)
        self.reserved += need
        if self.writer is None:
            name = self.vault.namer.new_name(ObjectKind.PACK)
            self.writer = await asyncio.to_thread(
                PackWriter, self.vault.cipher, name, self.scratch_dir, target_size=self.pack_size
            )
        await asyncio.to_thread(self.writer.add, cid, frame)
        self.bytes_copied += len(frame)
        if self.writer.full:
            await self.ship()

    async def ship(self) -> None:
        writer, reserved = self.writer, self.reserved
        if writer is None:
            return
        self.writer, self.reserved = None, 0
        try:
            finished = await asyncio.to_thread(writer.finish)
            try:
                await self.vault.backend.put(finished.name, finished.path, sha256=finished.sha256)
                found = await self.vault.backend.head(finished.name)
                if found != finished.size:
                    raise UploadVerifyError(finished.name, finished.size, found)
            finally:
                await asyncio.to_thread(finished.path.unlink, missing_ok=True)
            self.written.append((finished.name, finished.size, finished.blobs))
        except BaseException:
            await asyncio.to_thread(writer.abort)
            raise
        finally:
            self.budget.release(reserved)

    async def copy(self, packs: list[str], live: Mapping[str, Mapping[ChunkId, BlobRef]]) -> None:
        """The live blobs of `packs`, each read with one ranged GET and verified."""
        copied: set[ChunkId] = set()
        try:
            for pack in packs:
                reader = PackReader(self.vault.cipher, pack)
                for cid, ref in sorted(live[pack].items(), key=lambda item: item[1].offset):
                    if cid in copied:
                        continue
                    data = await self.vault.backend.get_range(pack, ref.offset, ref.length)
                    frame = await asyncio.to_thread(reader.blob_frame, ref, data)
                    await self.add(cid, frame)
                    copied.add(cid)
            await self.ship()
        except BaseException:
            await self.abort()
            raise

    async def abort(self) -> None:
        if self.writer is not None:
            await asyncio.to_thread(self.writer.abort)
            self.budget.release(self.reserved)
            self.writer, self.reserved = None, 0


def _clean_leftovers(scratch_dir: Path) -> None:
    for path in clean_scratch(scratch_dir):
        path.unlink(missing_ok=True)


async def repack(
    vault: Vault,
    scratch_dir: Path,
    budget: ScratchBudget,
    *,
    now_ns: int,
    threshold: float = 0.5,
    pack_size: int = DEFAULT_PACK_SIZE,
) -> RepackResult:
    """Rewrite the packs whose live bytes are under `threshold` of their size (write
    order in the module docstring). The rewritten packs stay until `purge` after the
    grace. `scratch_dir` should be the repack's own: leftover packs there are deleted."""
    if not 0 < threshold <= 1:
        raise ValueError("threshold must be in (0, 1]")
    await asyncio.to_thread(_clean_leftovers, scratch_dir)
    state = await _load(vault, now_ns)
    live_entries = [e for e in state.entries if e.deleted_ns is None]
    uses, marker = await _mark(vault, live_entries)
    live: dict[str, dict[ChunkId, BlobRef]] = {}
    for u in uses.values():
        for cid, loc in u.locations.items():
            live.setdefault(loc.pack_name, {})[cid] = loc.blob
    sizes = state.listing.packs
    chosen = sorted(
        p
        for p, blobs in live.items()
        if p in sizes and sum(b.length for b in blobs.values()) < threshold * sizes[p]
    )
    if not chosen:
        if state.changed:
            await _commit(vault, state, state.entries, now_ns)
        return RepackResult(state.head.generation, (), (), 0, ())

    rewriter = _Rewriter(vault, scratch_dir, budget, pack_size)
    await rewriter.copy(chosen, live)
    groups = _segment_groups(rewriter.written)
    refs = [await _write_segment(vault, packs) for packs in groups]

    chosen_set = set(chosen)
    sequence = max([state.head.high_sequence, *(e.sequence for e in state.entries)])
    replaced: dict[str, CatalogEntry] = {}
    for entry in live_entries:
        reads = uses.get(entry.name)
        if reads is not None and reads.packs & chosen_set:
            sequence += 1
            replaced[entry.name] = await _rewrite_manifest(vault, reads.manifest, sequence, refs)

    entries = [
        replace(e, deleted_ns=now_ns) if e.name in replaced else e for e in state.entries
    ] + list(replaced.values())
    catalog = await _commit(vault, state, entries, now_ns)

    cache = vault.cache
    if cache is not None:
        await asyncio.to_thread(cache.forget, chosen, _naming(marker, chosen_set))
        for ref, packs in zip(refs, groups, strict=True):
            for name, size, blobs in packs:
                await asyncio.to_thread(cache.add_pack, name, size, blobs, segment=ref.name)
            await asyncio.to_thread(cache.add_segment, ref.name, ref.sha256, [p[0] for p in packs])
        for new in replaced.values():
            await asyncio.to_thread(cache.add_manifest, new.name, new.sequence)
    return RepackResult(
        catalog_generation=catalog.generation,
        packs_rewritten=tuple(chosen),
        packs_written=tuple(name for name, _, _ in rewriter.written),
        bytes_copied=rewriter.bytes_copied,
        manifests_rewritten=tuple(e.name for e in replaced.values()),
    )


async def _write_segment(vault: Vault, packs: list[_Written]) -> SegmentRef:
    name = vault.namer.new_name(ObjectKind.INDEX)
    segment = IndexSegment.of_packs((pack, blobs) for pack, _, blobs in packs)
    sealed = await asyncio.to_thread(segment.seal, vault.cipher, name)
    await vault.put_sealed(name, sealed)
    return SegmentRef.of(name, sealed)


async def _rewrite_manifest(
    vault: Vault, old: OnlineManifest, sequence: int, refs: list[SegmentRef]
) -> CatalogEntry:
    """The same RP under a new name and sequence, reading the new segments first."""
    manifest = replace(old, sequence=sequence, index_segments=(*refs, *old.index_segments))
    name = vault.namer.new_name(ObjectKind.MANIFEST)
    sealed = await asyncio.to_thread(manifest.seal, vault.cipher, name)
    await vault.put_sealed(name, sealed)
    return CatalogEntry.of(name, manifest, sealed)


def _segment_groups(written: list[_Written]) -> list[list[_Written]]:
    """The new packs in groups of at most `SEGMENT_MAX_ENTRIES` blobs, one per segment."""
    groups: list[list[_Written]] = []
    group: list[_Written] = []
    for i, item in enumerate(written):
        group.append(item)
        if i == len(written) - 1 or sum(len(b) for _, _, b in group) >= SEGMENT_MAX_ENTRIES:
            groups.append(group)
            group = []
    return groups
