"""Reading the vault: list online RPs, read chunks, re-seed a pool (alternate-server recovery).

Trust: the head catalog (vault.py: newest generation, never below the one this server
saw) decides which manifests exist; each manifest is checked against it
(`Catalog.status`: digest and sequence), so a manifest put back from the past or
altered is refused, not listed. A manifest pins its index segments by digest. Every
blob is opened with its pack name and chunk id bound in the AEAD and its plaintext is
hashed against the chunk id, so a wrong location, a swapped or truncated pack yields
`TamperedObjectError`, never wrong bytes.

Fetching: the blobs a restore needs are grouped per pack and adjacent ones read with one
ranged GET (gaps up to `COALESCE_GAP`, runs up to `MAX_RUN`), a few packs at a time.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

from storage_pool import framing
from storage_pool.errors import RecoveryPointNotFoundError
from storage_pool.ids import ChunkId, RecoveryPointId
from storage_pool.manifest import iter_entries
from storage_pool.pool import StoragePool
from storage_pool.recovery_point import RecoveryPoint
from storage_pool.settle import settle
from storage_pool.vault.backend import NotFound
from storage_pool.vault.catalog import Catalog, CatalogEntry, ManifestStatus
from storage_pool.vault.format_errors import TamperedObjectError, VaultFormatError
from storage_pool.vault.index_segment import ChunkLocation, IndexSegment
from storage_pool.vault.online_manifest import OnlineManifest
from storage_pool.vault.pack import PackReader
from storage_pool.vault.vault import FETCH_PARALLELISM, Vault, gather_bounded

COALESCE_GAP = 256 * 1024
MAX_RUN = 8 * 1024 * 1024
PUT_BATCH = 64


class ChunkNotInVaultError(VaultFormatError):
    def __init__(self, cid: ChunkId) -> None:
        super().__init__(f"chunk {cid.hex()} is not located in the vault")
        self.chunk_id = cid


@dataclass(frozen=True, slots=True)
class OnlineRecoveryPoint:
    name: str  # the manifest object
    manifest: OnlineManifest
    status: ManifestStatus

    @property
    def recovery_point(self) -> RecoveryPoint:
        return self.manifest.recovery_point

    @property
    def id(self) -> RecoveryPointId:
        return self.manifest.recovery_point.id

    @property
    def data_source(self) -> str:
        return self.manifest.recovery_point.data_source


@dataclass(frozen=True, slots=True)
class OnlineListing:
    catalog_generation: int
    rps: tuple[OnlineRecoveryPoint, ...]  # live, soft-deleted and pending, by sequence
    missing: tuple[CatalogEntry, ...]  # in the catalog, gone from the vault
    refused: tuple[tuple[str, str], ...]  # (manifest, why): rolled back or tampered


@dataclass(frozen=True, slots=True)
class ReseedResult:
    rp_id: RecoveryPointId
    chunks: int
    chunks_fetched: int
    already_present: bool


class VaultReader:
    def __init__(self, vault: Vault, *, parallelism: int = FETCH_PARALLELISM) -> None:
        self.vault = vault
        self.parallelism = parallelism
        self._head: Catalog | None = None
        self._locations: dict[ChunkId, ChunkLocation] = {}

    async def _catalog(self) -> Catalog:
        if self._head is None:
            _, self._head = await self.vault.head(await self.vault.scan())
        return self._head

    async def list_online_rps(self) -> OnlineListing:
        listing = await self.vault.scan()
        _, head = await self.vault.head(listing)
        self._head = head
        refused: list[tuple[str, str]] = []

        async def probe(name: str) -> OnlineRecoveryPoint | None:
            try:
                manifest, sealed = await self.vault.open_manifest(name)
                return OnlineRecoveryPoint(name, manifest, head.status(name, manifest, sealed))
            except (TamperedObjectError, VaultFormatError) as err:
                refused.append((name, str(err)))
            except NotFound:
                pass  # deleted since listed: reported as missing below if it mattered
            return None

        found = await gather_bounded(
            [functools.partial(probe, n) for n in sorted(listing.manifests)], self.parallelism
        )
        rps = sorted((r for r in found if r is not None), key=lambda r: r.manifest.sequence)
        return OnlineListing(
            head.generation, tuple(rps), head.missing(listing.manifests), tuple(sorted(refused))
        )

    async def open_manifest(self, name: str) -> OnlineRecoveryPoint:
        """One manifest, checked against the head catalog (RollbackError if stale)."""
        head = await self._catalog()
        manifest, sealed = await self.vault.open_manifest(name)
        return OnlineRecoveryPoint(name, manifest, head.status(name, manifest, sealed))

    async def load_locations(self, orp: OnlineRecoveryPoint) -> int:
        """Load the index segments the manifest pins (digests checked); how many rows."""

        async def load(ref_index: int) -> IndexSegment:
            ref = orp.manifest.index_segments[ref_index]
            data = await self.vault.backend.get(ref.name)
            ref.check(data)
            return await asyncio.to_thread(IndexSegment.open, self.vault.cipher, ref.name, data)

        segments = await gather_bounded(
            [functools.partial(load, i) for i in range(len(orp.manifest.index_segments))],
            self.parallelism,
        )
        count = 0
        for segment in segments:
            for loc in segment.locations:
                self._locations.setdefault(loc.chunk_id, loc)
                count += 1
        return count

    async def _locate(self, ids: Sequence[ChunkId]) -> dict[ChunkId, ChunkLocation]:
        found = {c: self._locations[c] for c in ids if c in self._locations}
        rest = [c for c in ids if c not in found]
        if rest and self.vault.cache is not None:
            found.update(await asyncio.to_thread(self.vault.cache.locate, rest))
        for cid in ids:
            if cid not in found:
                raise ChunkNotInVaultError(cid)
        return found

    async def read_frames(self, ids: Sequence[ChunkId]) -> AsyncIterator[tuple[ChunkId, bytes]]:
        """Verified pool frames of `ids` (unique), in pack order, a few runs at a time."""
        locations = await self._locate(list(dict.fromkeys(ids)))
        runs = _coalesce(locations.values())
        for i in range(0, len(runs), self.parallelism):
            window = runs[i : i + self.parallelism]
            results = await asyncio.gather(*(self._fetch_run(run) for run in window))
            for frames in results:
                for item in frames:
                    yield item

    async def _fetch_run(self, run: list[ChunkLocation]) -> list[tuple[ChunkId, bytes]]:
        pack = run[0].pack_name
        start = run[0].blob.offset
        end = run[-1].blob.offset + run[-1].blob.length
        data = await self.vault.backend.get_range(pack, start, end - start)

        def open_all() -> list[tuple[ChunkId, bytes]]:
            reader = PackReader(self.vault.cipher, pack)
            view = memoryview(data)
            out = []
            for loc in run:
                lo = loc.blob.offset - start
                # A short read (truncated pack) gives a short slice: refused by blob_frame.
                piece = view[lo : lo + loc.blob.length]
                out.append((loc.chunk_id, reader.blob_frame(loc.blob, piece)))
            return out

        return await asyncio.to_thread(open_all)

    async def read_chunk(self, cid: ChunkId) -> bytes:
        """One chunk's verified plaintext, with one ranged GET."""
        async for _, frame in self.read_frames([cid]):
            return await asyncio.to_thread(framing.decode, frame)
        raise ChunkNotInVaultError(cid)

    async def restore_into_pool(self, pool: StoragePool, orp: OnlineRecoveryPoint) -> ReseedResult:
        """Re-seed `pool` with the RP: its missing chunks, then its record (the commit)."""
        rp = orp.recovery_point
        try:
            await pool.get_recovery_point(rp.id)
            return ReseedResult(rp.id, 0, 0, already_present=True)
        except RecoveryPointNotFoundError:
            pass
        await self.load_locations(orp)
        manifest_frames = {cid: f async for cid, f in self.read_frames(rp.manifest_chunks)}

        def file_ids() -> list[ChunkId]:
            pieces = (framing.decode(manifest_frames[c]) for c in rp.manifest_chunks)
            ids: dict[ChunkId, None] = {}
            for entry in iter_entries(pieces, f"online recovery point {rp.id}"):
                ids.update(dict.fromkeys(entry.chunk_ids))
            return list(ids)

        ids = await asyncio.to_thread(file_ids)
        fetched = 0
        async with pool.session(rp.data_source) as session:
            missing = await session.missing(ids)
            batch: list[framing.EncodedChunk] = []
            async for cid, frame in self.read_frames(missing):
                batch.append(_encoded(cid, frame))
                if len(batch) >= PUT_BATCH:
                    await session.put(batch, verify=False)  # blob_frame verified each
                    fetched += len(batch)
                    batch = []
            manifest_missing = await session.missing(list(rp.manifest_chunks))
            batch.extend(_encoded(c, manifest_frames[c]) for c in manifest_missing)
            if batch:
                await session.put(batch, verify=False)
                fetched += len(batch)
            # The commit, as a session's. A cancel meanwhile waits for the record write to
            # end (its thread cannot be stopped), so the caller finds it written or not.
            await settle(pool.run(pool.write_recovery_point, rp), name=f"reseed-commit-{rp.id}")
        return ReseedResult(
            rp.id, len(ids) + len(rp.manifest_chunks), fetched, already_present=False
        )


def _encoded(cid: ChunkId, frame: bytes) -> framing.EncodedChunk:
    _, size, _ = framing.read_header(frame)
    return framing.EncodedChunk(cid, frame, size)


def _coalesce(locations: Iterable[ChunkLocation]) -> list[list[ChunkLocation]]:
    ordered = sorted(locations, key=lambda loc: (loc.pack_name, loc.blob.offset))
    runs: list[list[ChunkLocation]] = []
    for loc in ordered:
        if runs:
            last = runs[-1]
            end = last[-1].blob.offset + last[-1].blob.length
            if (
                last[-1].pack_name == loc.pack_name
                and loc.blob.offset - end <= COALESCE_GAP
                and loc.blob.offset + loc.blob.length - last[0].blob.offset <= MAX_RUN
            ):
                last.append(loc)
                continue
        runs.append([loc])
    return runs


__all__ = [
    "ChunkNotInVaultError",
    "OnlineListing",
    "OnlineRecoveryPoint",
    "ReseedResult",
    "VaultReader",
]
