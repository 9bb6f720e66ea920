"""Catalogs: the commit point of the vault and its defence against rollback.

A catalog is a sealed object (kind "catalog", its own random name) listing every online-RP
manifest the vault holds, live or soft-deleted::

    {"v": 1, "generation": int, "high_sequence": int, "created_ns": int,
     "manifests": [[name, sequence, data source, rp id, sha256 of sealed manifest,
                    deleted_ns or nil], ...]}

Writers: after a manifest (sequence s), write a catalog with generation + 1 and
high_sequence >= s that lists it, then delete older catalogs. A retention deletion
writes a new catalog with the entry's deleted_ns set; purging (after 14 days) drops
the entry and deletes the manifest object.

Readers: `select_head` takes the catalog with the highest generation (refusing one older
than the caller's trusted `min_generation`), then `status` classifies each manifest
found in a listing:

    LIVE      listed in the head, sequence and digest match
    DELETED   listed with deleted_ns: soft-deleted, restorable until purged
    PENDING   not listed, sequence above high_sequence: written after the head (a crash
              before the catalog commit); the next writer adopts it
    otherwise RollbackError: an older or purged manifest was put back
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace

from storage_pool.ids import RecoveryPointId, parse_recovery_point_id
from storage_pool.vault.crypto import ObjectCipher
from storage_pool.vault.format import ObjectKind
from storage_pool.vault.format_errors import ObjectFormatError, RollbackError
from storage_pool.vault.names import is_object_name
from storage_pool.vault.online_manifest import OnlineManifest
from storage_pool.vault.sealed_doc import int_field, open_doc, seal_doc

CATALOG_VERSION = 1


class ManifestStatus(enum.StrEnum):
    LIVE = "live"
    DELETED = "deleted"
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    name: str
    sequence: int
    data_source: str
    rp_id: RecoveryPointId
    sha256: bytes
    deleted_ns: int | None = None

    @classmethod
    def of(cls, name: str, manifest: OnlineManifest, sealed: bytes) -> CatalogEntry:
        rp = manifest.recovery_point
        return cls(name, manifest.sequence, rp.data_source, rp.id, hashlib.sha256(sealed).digest())


@dataclass(frozen=True, slots=True)
class Catalog:
    generation: int
    high_sequence: int
    created_ns: int
    entries: tuple[CatalogEntry, ...] = ()

    @property
    def next_sequence(self) -> int:
        return self.high_sequence + 1

    def entry(self, name: str) -> CatalogEntry | None:
        return next((e for e in self.entries if e.name == name), None)

    def live(self) -> tuple[CatalogEntry, ...]:
        return tuple(e for e in self.entries if e.deleted_ns is None)

    def status(self, name: str, manifest: OnlineManifest, sealed: bytes) -> ManifestStatus:
        """Classify an opened manifest against this (head) catalog; RollbackError if stale."""
        entry = self.entry(name)
        if entry is None:
            if manifest.sequence > self.high_sequence:
                return ManifestStatus.PENDING
            raise RollbackError(
                name,
                ObjectKind.MANIFEST,
                f"sequence {manifest.sequence} is not in catalog generation {self.generation},"
                f" which covers sequences up to {self.high_sequence}: a deleted or rolled-back"
                " manifest was put back",
            )
        if entry.sequence != manifest.sequence or entry.sha256 != hashlib.sha256(sealed).digest():
            raise RollbackError(
                name, ObjectKind.MANIFEST, "differs from the manifest the catalog recorded"
            )
        return ManifestStatus.LIVE if entry.deleted_ns is None else ManifestStatus.DELETED

    def missing(self, listed: Iterable[str]) -> tuple[CatalogEntry, ...]:
        """Entries whose manifest object is absent from a listing (deleted in the vault)."""
        present = set(listed)
        return tuple(e for e in self.entries if e.name not in present)

    def adding(self, new: Iterable[CatalogEntry], *, now_ns: int) -> Catalog:
        """The next generation with `new` entries (manifests written since this one)."""
        added = tuple(new)
        known = {e.name for e in self.entries}
        if any(e.name in known for e in added):
            raise ValueError("a manifest is already in the catalog")
        high = max([self.high_sequence, *(e.sequence for e in added)])
        return Catalog(self.generation + 1, high, now_ns, self.entries + added)

    def deleting(self, names: Iterable[str], *, now_ns: int, purge: bool = False) -> Catalog:
        """The next generation with `names` soft-deleted (or dropped when `purge`)."""
        drop = set(names)
        if purge:
            kept = tuple(e for e in self.entries if e.name not in drop)
        else:
            kept = tuple(
                replace(e, deleted_ns=now_ns) if e.name in drop and e.deleted_ns is None else e
                for e in self.entries
            )
        return Catalog(self.generation + 1, self.high_sequence, now_ns, kept)

    def seal(self, cipher: ObjectCipher, name: str) -> bytes:
        doc = {
            "v": CATALOG_VERSION,
            "generation": self.generation,
            "high_sequence": self.high_sequence,
            "created_ns": self.created_ns,
            "manifests": [
                [e.name, e.sequence, e.data_source, e.rp_id, e.sha256, e.deleted_ns]
                for e in self.entries
            ],
        }
        return seal_doc(cipher, ObjectKind.CATALOG, name, doc)

    @classmethod
    def open(cls, cipher: ObjectCipher, name: str, data: bytes | memoryview) -> Catalog:
        doc = open_doc(cipher, ObjectKind.CATALOG, name, data, CATALOG_VERSION)
        where = (ObjectKind.CATALOG, name)
        rows = doc.get("manifests")
        if not isinstance(rows, list):
            raise ObjectFormatError(name, ObjectKind.CATALOG, "'manifests' must be a list")
        entries = []
        for row in rows:
            try:
                entries.append(_entry(row))
            except (TypeError, ValueError) as err:
                raise ObjectFormatError(
                    name, ObjectKind.CATALOG, f"malformed entry {row!r:.100}: {err}"
                ) from err
        return cls(
            generation=int_field(doc, "generation", where),
            high_sequence=int_field(doc, "high_sequence", where),
            created_ns=int_field(doc, "created_ns", where),
            entries=tuple(entries),
        )


EMPTY_CATALOG = Catalog(generation=0, high_sequence=0, created_ns=0)


def _entry(row: object) -> CatalogEntry:
    if not isinstance(row, list) or len(row) != 6:
        raise ValueError("expected 6 fields")
    name, sequence, data_source, rp_id, digest, deleted = row
    if not is_object_name(name) or not isinstance(data_source, str):
        raise ValueError("bad name or data source")
    if type(sequence) is not int or not isinstance(digest, bytes) or len(digest) != 32:
        raise ValueError("bad sequence or digest")
    if deleted is not None and type(deleted) is not int:
        raise ValueError("bad deleted_ns")
    return CatalogEntry(
        name, sequence, data_source, parse_recovery_point_id(rp_id), digest, deleted
    )


def select_head(
    catalogs: Iterable[tuple[str, Catalog]], *, min_generation: int = 0
) -> tuple[str, Catalog]:
    """The newest catalog, or EMPTY_CATALOG (name "") for a vault that has none yet.

    RollbackError when the newest is older than `min_generation`, the generation the
    caller last saw: newer catalogs were deleted and an older state put back.
    """
    best: tuple[str, Catalog] = ("", EMPTY_CATALOG)
    for name, catalog in catalogs:
        if catalog.generation > best[1].generation:
            best = (name, catalog)
    if best[1].generation < min_generation:
        raise RollbackError(
            best[0] or "(none)",
            ObjectKind.CATALOG,
            f"the newest catalog has generation {best[1].generation}, but generation"
            f" {min_generation} was seen before: the vault was rolled back",
        )
    return best
