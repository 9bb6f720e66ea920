"""Index segments: where chunks sit in the vault, written after the packs they describe.

Sealed as kind "index" under its own name; msgpack document::

    {"v": 1, "packs": [pack name, ...],
     "entries": [[chunk id (32 bytes), pack number, offset, length], ...]}

`pack number` indexes "packs", so a pack's name is stored once per segment. A reader
merges segments into one map; the same chunk in two segments (a pack rewritten by
repack) is fine, either location is valid while its pack exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from storage_pool.ids import CHUNK_ID_LEN, ChunkId, as_chunk_id
from storage_pool.vault.crypto import ObjectCipher
from storage_pool.vault.format import ObjectKind
from storage_pool.vault.format_errors import ObjectFormatError
from storage_pool.vault.names import is_object_name
from storage_pool.vault.pack import BlobRef
from storage_pool.vault.sealed_doc import open_doc, seal_doc

INDEX_VERSION = 1


@dataclass(frozen=True, slots=True)
class ChunkLocation:
    pack_name: str
    blob: BlobRef

    @property
    def chunk_id(self) -> ChunkId:
        return self.blob.chunk_id


@dataclass(frozen=True, slots=True)
class IndexSegment:
    locations: tuple[ChunkLocation, ...]

    @classmethod
    def of_packs(cls, packs: Iterable[tuple[str, Iterable[BlobRef]]]) -> IndexSegment:
        return cls(tuple(ChunkLocation(name, ref) for name, refs in packs for ref in refs))

    def as_dict(self) -> dict[ChunkId, ChunkLocation]:
        return {loc.chunk_id: loc for loc in self.locations}

    def seal(self, cipher: ObjectCipher, name: str) -> bytes:
        packs: dict[str, int] = {}
        entries = []
        for loc in self.locations:
            number = packs.setdefault(loc.pack_name, len(packs))
            entries.append([loc.chunk_id, number, loc.blob.offset, loc.blob.length])
        doc = {"v": INDEX_VERSION, "packs": list(packs), "entries": entries}
        return seal_doc(cipher, ObjectKind.INDEX, name, doc)

    @classmethod
    def open(cls, cipher: ObjectCipher, name: str, data: bytes | memoryview) -> IndexSegment:
        doc = open_doc(cipher, ObjectKind.INDEX, name, data, INDEX_VERSION)

        def bad(reason: str) -> ObjectFormatError:
            return ObjectFormatError(name, ObjectKind.INDEX, reason)

        packs = doc.get("packs")
        entries = doc.get("entries")
        if not isinstance(packs, list) or not all(is_object_name(p) for p in packs):
            raise bad("'packs' must be a list of object names")
        if not isinstance(entries, list):
            raise bad("'entries' must be a list")
        locations = []
        for row in entries:
            if (
                not isinstance(row, list)
                or len(row) != 4
                or not isinstance(row[0], bytes)
                or len(row[0]) != CHUNK_ID_LEN
                or not all(type(v) is int and v >= 0 for v in row[1:])
                or row[1] >= len(packs)
            ):
                raise bad(f"malformed entry {row!r:.100}")
            ref = BlobRef(as_chunk_id(row[0]), row[2], row[3])
            locations.append(ChunkLocation(packs[row[1]], ref))
        return cls(tuple(locations))
