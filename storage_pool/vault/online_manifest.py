"""Online-RP manifests: one sealed object per online recovery point, written after its
packs and index segments (write order in format.py).

msgpack document, sealed as kind "manifest" under its own name::

    {"v": 1, "sequence": int, "created_ns": int,
     "data_source_id": str, "agent": str,
     "record": bytes,                   # the pool's recovery-point record JSON, verbatim
     "index_segments": [[name, sha256 of the sealed segment], ...]}

The pool record (recovery_point.py) names the disk RP, its data source, its creation
time, labels and the chunks of the pool manifest, which live in packs like file data:
a fresh server re-seeds its pool from the record and those chunks. `sequence` is
vault-wide and monotonic; catalog.py uses it to refuse restored old manifests. The
listed segments are the ones a restore of this RP may need; their digests pin them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from storage_pool.errors import ManifestError
from storage_pool.recovery_point import RecoveryPoint
from storage_pool.vault.crypto import ObjectCipher
from storage_pool.vault.format import ObjectKind
from storage_pool.vault.format_errors import ObjectFormatError, TamperedObjectError
from storage_pool.vault.names import is_object_name
from storage_pool.vault.sealed_doc import bytes_field, int_field, open_doc, seal_doc, str_field

MANIFEST_VERSION = 1
MAX_NAME = 1024


@dataclass(frozen=True, slots=True)
class SegmentRef:
    """An index segment a manifest relies on, pinned by the SHA-256 of its sealed bytes."""

    name: str
    sha256: bytes

    @classmethod
    def of(cls, name: str, sealed: bytes) -> SegmentRef:
        return cls(name, hashlib.sha256(sealed).digest())

    def check(self, sealed: bytes | memoryview) -> None:
        """TamperedObjectError unless `sealed` is the segment this ref pinned."""
        if hashlib.sha256(sealed).digest() != self.sha256:
            raise TamperedObjectError(
                self.name, ObjectKind.INDEX, "differs from the segment the manifest pinned"
            )


@dataclass(frozen=True, slots=True)
class OnlineManifest:
    sequence: int
    created_ns: int
    data_source_id: str
    agent: str
    recovery_point: RecoveryPoint
    index_segments: tuple[SegmentRef, ...]

    def seal(self, cipher: ObjectCipher, name: str) -> bytes:
        doc = {
            "v": MANIFEST_VERSION,
            "sequence": self.sequence,
            "created_ns": self.created_ns,
            "data_source_id": self.data_source_id,
            "agent": self.agent,
            "record": self.recovery_point.to_json(),
            "index_segments": [[s.name, s.sha256] for s in self.index_segments],
        }
        return seal_doc(cipher, ObjectKind.MANIFEST, name, doc)

    @classmethod
    def open(cls, cipher: ObjectCipher, name: str, data: bytes | memoryview) -> OnlineManifest:
        doc = open_doc(cipher, ObjectKind.MANIFEST, name, data, MANIFEST_VERSION)
        where = (ObjectKind.MANIFEST, name)
        record = bytes_field(doc, "record", where)
        try:
            rp = RecoveryPoint.from_json(record, Path(f"{_record_id(record)}.json"))
        except ManifestError as err:
            raise ObjectFormatError(name, ObjectKind.MANIFEST, str(err)) from err
        segments = doc.get("index_segments")
        if not isinstance(segments, list) or not all(
            isinstance(s, list)
            and len(s) == 2
            and is_object_name(s[0])
            and isinstance(s[1], bytes)
            and len(s[1]) == 32
            for s in segments
        ):
            raise ObjectFormatError(name, ObjectKind.MANIFEST, "malformed index_segments")
        return cls(
            sequence=int_field(doc, "sequence", where),
            created_ns=int_field(doc, "created_ns", where),
            data_source_id=str_field(doc, "data_source_id", where, max_len=MAX_NAME),
            agent=str_field(doc, "agent", where, max_len=MAX_NAME),
            recovery_point=rp,
            index_segments=tuple(SegmentRef(s[0], s[1]) for s in segments),
        )


def _record_id(record: bytes) -> str:
    # from_json checks the id against the file name it came from; here the "file name"
    # is the id the record claims, and the AEAD already vouches for the record.
    try:
        doc = json.loads(record)
    except ValueError as err:
        raise ManifestError("recovery point record", f"not JSON: {err}") from err
    rp_id = doc.get("id") if isinstance(doc, dict) else None
    if not isinstance(rp_id, str) or "/" in rp_id:
        raise ManifestError("recovery point record", "no id")
    return rp_id
