"""An open vault: a backend, its keys, and the operations on the vault's objects as a whole.

`Vault.create` / `Vault.open` handle the header (header.py); `scan` lists ``data/`` and
sorts object names into kinds by their keyed tags (names.py); `head` downloads every
catalog and selects the newest, refusing one older than the generation this server
last saw (kept in the location cache); `pending` finds manifests written after the
head (a job that crashed between its manifest and its catalog); `commit_catalog`
writes the next catalog generation and then deletes the older ones; `rebuild_cache`
rebuilds the location cache from the vault alone. A segment that names a pack the vault
no longer holds (purged) is not used by the rebuilt cache: its kept packs are adopted
from their trailers as unindexed, so no later manifest pins a segment that could
resolve a chunk to a purged pack.

Header, unlock and sealing run in worker threads (Argon2id, AES-GCM on large objects).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from storage_pool.errors import IntegrityError
from storage_pool.vault.backend import NotFound, VaultBackend
from storage_pool.vault.catalog import Catalog, CatalogEntry, ManifestStatus, select_head
from storage_pool.vault.crypto import ObjectCipher
from storage_pool.vault.format import DATA_PREFIX, HEADER_NAME, ObjectKind
from storage_pool.vault.format_errors import TamperedObjectError, VaultFormatError
from storage_pool.vault.grouped import most_important
from storage_pool.vault.header import VaultHeader, create_vault, unlock
from storage_pool.vault.index_segment import IndexSegment
from storage_pool.vault.keys import KDF_DEFAULT, KDF_FLOOR, KdfParams, VaultKeys
from storage_pool.vault.location_cache import LocationCache
from storage_pool.vault.names import ObjectNamer
from storage_pool.vault.online_manifest import OnlineManifest
from storage_pool.vault.pack import TAIL, BlobRef, PackReader, trailer_span

T = TypeVar("T")
TAIL_FETCH = 64 * 1024  # one ranged GET of a pack's tail usually holds its whole trailer
FETCH_PARALLELISM = 8


class VaultExistsError(VaultFormatError):
    def __init__(self, where: str) -> None:
        super().__init__(f"{where} already holds a vault header; refusing to overwrite it")


class NoVaultError(VaultFormatError):
    def __init__(self, where: str) -> None:
        super().__init__(f"{where} holds no vault (no {HEADER_NAME})")


@dataclass(slots=True)
class VaultListing:
    """Object names of one listing of ``data/``, by kind, with their sizes."""

    packs: dict[str, int] = field(default_factory=dict)
    segments: dict[str, int] = field(default_factory=dict)
    manifests: dict[str, int] = field(default_factory=dict)
    catalogs: dict[str, int] = field(default_factory=dict)
    foreign: list[str] = field(default_factory=list)  # not made by this vault's key


@dataclass(frozen=True, slots=True)
class PendingManifest:
    name: str
    manifest: OnlineManifest
    sealed: bytes

    def entry(self) -> CatalogEntry:
        return CatalogEntry.of(self.name, self.manifest, self.sealed)


@dataclass(frozen=True, slots=True)
class RebuildReport:
    packs_indexed: int
    packs_adopted: int  # orphans: no segment covers them, their trailer was read
    packs_refused: tuple[str, ...]  # orphans whose trailer does not authenticate
    chunks: int
    segments: int


async def gather_bounded(jobs: Iterable[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run `jobs` with at most `limit` at once; results in order. The first failure
    cancels the rest and is raised as itself, not as a group, so callers decide by class
    (an integrity failure is preferred over another error that raced it)."""
    sem = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with sem:
            return await job()

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(j)) for j in jobs]
    except BaseExceptionGroup as grouped:
        raise _first_error(grouped) from None
    return [t.result() for t in tasks]


def _first_error(grouped: BaseExceptionGroup[BaseException]) -> BaseException:
    return most_important(grouped, (IntegrityError, Exception))


class Vault:
    """One unlocked vault. `cache` is required for writing (uploader.py)."""

    def __init__(
        self,
        backend: VaultBackend,
        header: VaultHeader,
        keys: VaultKeys,
        cache: LocationCache | None = None,
    ) -> None:
        self.backend = backend
        self.header = header
        self.keys = keys
        self.cipher = ObjectCipher(keys)
        self.namer = ObjectNamer(keys)
        self.cache = cache

    def __repr__(self) -> str:
        return f"Vault({self.backend.description}, id={self.header.vault_id_hex})"

    @property
    def vault_id(self) -> bytes:
        return self.keys.vault_id

    @classmethod
    async def create(
        cls,
        backend: VaultBackend,
        passphrase: str,
        *,
        cache_dir: Path | None = None,
        now_ns: int | None = None,
        params: KdfParams = KDF_DEFAULT,
        min_params: KdfParams = KDF_FLOOR,
    ) -> Vault:
        """Create the container and the header; VaultExistsError if a header is there."""
        header, keys = await asyncio.to_thread(
            create_vault,
            passphrase,
            now_ns=time.time_ns() if now_ns is None else now_ns,
            params=params,
            min_params=min_params,
        )
        await backend.ensure_container()
        if not await backend.create_if_absent(HEADER_NAME, header.to_json()):
            raise VaultExistsError(backend.description)
        return await cls._with_cache(backend, header, keys, cache_dir)

    @classmethod
    async def open(
        cls,
        backend: VaultBackend,
        passphrase: str,
        *,
        cache_dir: Path | None = None,
        min_params: KdfParams = KDF_FLOOR,
        min_header_generation: int = 0,
    ) -> Vault:
        """Unlock with `passphrase`: WrongPassphraseError, NoVaultError, HeaderError..."""
        try:
            raw = await backend.get(HEADER_NAME)
        except NotFound as err:
            raise NoVaultError(backend.description) from err
        header = VaultHeader.from_json(raw)
        keys = await asyncio.to_thread(
            unlock,
            header,
            passphrase,
            min_params=min_params,
            min_generation=min_header_generation,
        )
        return await cls._with_cache(backend, header, keys, cache_dir)

    @classmethod
    async def _with_cache(
        cls, backend: VaultBackend, header: VaultHeader, keys: VaultKeys, cache_dir: Path | None
    ) -> Vault:
        cache = None
        if cache_dir is not None:
            cache = await asyncio.to_thread(LocationCache, cache_dir, keys.vault_id)
        return cls(backend, header, keys, cache)

    async def close(self) -> None:
        if self.cache is not None:
            await asyncio.to_thread(self.cache.close)

    def require_cache(self) -> LocationCache:
        if self.cache is None:
            raise ValueError("this operation needs the vault opened with a cache_dir")
        return self.cache

    # -- objects --

    async def put_sealed(self, name: str, sealed: bytes) -> None:
        await self.backend.put(name, sealed, sha256=hashlib.sha256(sealed).digest())

    async def scan(self) -> VaultListing:
        listing = VaultListing()
        by_kind = {
            ObjectKind.PACK: listing.packs,
            ObjectKind.INDEX: listing.segments,
            ObjectKind.MANIFEST: listing.manifests,
            ObjectKind.CATALOG: listing.catalogs,
        }
        async for info in self.backend.list(DATA_PREFIX):
            kind = self.namer.kind_of(info.name)
            if kind is None:
                listing.foreign.append(info.name)
            else:
                by_kind[kind][info.name] = info.size
        return listing

    async def head(self, listing: VaultListing) -> tuple[str, Catalog]:
        """The newest catalog; RollbackError if older than the one this server last saw."""

        async def fetch(name: str) -> tuple[str, Catalog]:
            data = await self.backend.get(name)
            return name, await asyncio.to_thread(Catalog.open, self.cipher, name, data)

        catalogs = await gather_bounded(
            [functools.partial(fetch, n) for n in listing.catalogs], FETCH_PARALLELISM
        )
        trusted = self.cache.trusted_generation if self.cache is not None else 0
        name, head = select_head(catalogs, min_generation=trusted)
        if self.cache is not None:
            await asyncio.to_thread(self.cache.see_generation, head.generation)
        return name, head

    async def open_manifest(self, name: str) -> tuple[OnlineManifest, bytes]:
        sealed = await self.backend.get(name)
        manifest = await asyncio.to_thread(OnlineManifest.open, self.cipher, name, sealed)
        return manifest, sealed

    async def pending(self, listing: VaultListing, head: Catalog) -> list[PendingManifest]:
        """Manifests newer than the head catalog, by sequence. Stale ones (RollbackError)
        and ones that do not authenticate are left out: never adopted into a catalog."""
        unlisted = [n for n in listing.manifests if head.entry(n) is None]

        async def probe(name: str) -> PendingManifest | None:
            try:
                manifest, sealed = await self.open_manifest(name)
                if head.status(name, manifest, sealed) is ManifestStatus.PENDING:
                    return PendingManifest(name, manifest, sealed)
            except (TamperedObjectError, NotFound):
                return None
            return None

        found = await gather_bounded(
            [functools.partial(probe, n) for n in unlisted], FETCH_PARALLELISM
        )
        return sorted((p for p in found if p is not None), key=lambda p: p.manifest.sequence)

    async def commit_catalog(
        self,
        listing: VaultListing,
        head_name: str,
        head: Catalog,
        new: Iterable[CatalogEntry],
        *,
        now_ns: int | None = None,
    ) -> tuple[str, Catalog]:
        """Write generation + 1 with `new` entries (the commit), then drop older catalogs."""
        catalog = head.adding(new, now_ns=time.time_ns() if now_ns is None else now_ns)
        name = self.namer.new_name(ObjectKind.CATALOG)
        sealed = await asyncio.to_thread(catalog.seal, self.cipher, name)
        await self.put_sealed(name, sealed)
        if self.cache is not None:
            await asyncio.to_thread(self.cache.see_generation, catalog.generation)
        for old in {*listing.catalogs, head_name} - {name, ""}:
            await self.backend.delete(old)
        return name, catalog

    # -- the location cache --

    async def rebuild_cache(self) -> RebuildReport:
        """Rebuild the location cache from the vault alone (see location_cache.py)."""
        cache = self.require_cache()
        listing = await self.scan()
        _, head = await self.head(listing)
        await asyncio.to_thread(cache.clear)

        async def load(name: str) -> tuple[str, bytes, IndexSegment]:
            data = await self.backend.get(name)
            return name, data, await asyncio.to_thread(IndexSegment.open, self.cipher, name, data)

        segments = await gather_bounded(
            [functools.partial(load, n) for n in sorted(listing.segments)], FETCH_PARALLELISM
        )
        covered: set[str] = set()
        chunks = 0
        for name, data, segment in segments:
            by_pack: dict[str, list[BlobRef]] = {}
            for loc in segment.locations:
                by_pack.setdefault(loc.pack_name, []).append(loc.blob)
            if any(p not in listing.packs for p in by_pack):
                # It names a purged pack: a manifest pinning it could resolve a chunk
                # there (first row wins), so its kept packs count as not yet indexed and
                # the next job writes a fresh segment for them.
                continue
            fresh = [p for p in by_pack if p not in covered]
            for pack in fresh:
                blobs = by_pack[pack]
                chunks += len(blobs)
                await asyncio.to_thread(
                    cache.add_pack,
                    pack,
                    listing.packs[pack],
                    blobs,
                    segment=name,
                )
            await asyncio.to_thread(cache.add_segment, name, hashlib.sha256(data).digest(), fresh)
            covered.update(fresh)
        orphans = [p for p in sorted(listing.packs) if p not in covered]

        async def adopt(pack: str) -> bool:
            try:
                blobs = await read_pack_trailer(self, pack, listing.packs[pack])
            except (TamperedObjectError, VaultFormatError):
                return False
            await asyncio.to_thread(cache.add_pack, pack, listing.packs[pack], blobs)
            return True

        adopted = await gather_bounded(
            [functools.partial(adopt, p) for p in orphans], FETCH_PARALLELISM
        )
        for entry in head.entries:
            await asyncio.to_thread(cache.add_manifest, entry.name, entry.sequence)
        counts = await asyncio.to_thread(cache.counts)
        return RebuildReport(
            packs_indexed=len(covered),
            packs_adopted=sum(adopted),
            packs_refused=tuple(p for p, ok in zip(orphans, adopted, strict=True) if not ok),
            chunks=counts["chunks"],
            segments=len(segments),
        )


async def read_pack_trailer(vault: Vault, pack: str, size: int) -> tuple[BlobRef, ...]:
    """The blob list of a pack in the vault: one ranged GET of its tail (two if the
    trailer is longer than `TAIL_FETCH`)."""
    if size < TAIL.size:
        raise TamperedObjectError(pack, ObjectKind.PACK, f"{size} bytes is shorter than a pack")
    fetch = min(size, TAIL_FETCH)
    suffix = await vault.backend.get_range(pack, size - fetch, fetch)
    span = trailer_span(pack, suffix)
    if span > len(suffix):
        if span > size:
            raise TamperedObjectError(pack, ObjectKind.PACK, "trailer longer than the pack")
        suffix = await vault.backend.get_range(pack, size - span, span)
    reader = PackReader(vault.cipher, pack)
    return await asyncio.to_thread(reader.trailer, suffix, pack_size=size)
