"""Index segments, online-RP manifests and catalogs: round trips, rollback defence, and a
whole mini vault scanned for plaintext and chunk hashes."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from storage_pool.framing import encode_chunk
from storage_pool.ids import ChunkId, new_recovery_point_id
from storage_pool.recovery_point import RecoveryPoint
from storage_pool.vault.catalog import (
    EMPTY_CATALOG,
    Catalog,
    CatalogEntry,
    ManifestStatus,
    select_head,
)
from storage_pool.vault.crypto import ObjectCipher
from storage_pool.vault.format import HEADER_NAME, ObjectKind
from storage_pool.vault.format_errors import RollbackError, TamperedObjectError
from storage_pool.vault.header import create_vault
from storage_pool.vault.index_segment import IndexSegment
from storage_pool.vault.keys import KDF_TESTING
from storage_pool.vault.names import ObjectNamer
from storage_pool.vault.online_manifest import OnlineManifest, SegmentRef
from storage_pool.vault.pack import PackReader, PackWriter

MARKER = "ZQX-PLAINTEXT-MARKER-7731"


def _rp(data_source: str, chunks: tuple[ChunkId, ...], seconds: int) -> RecoveryPoint:
    now = datetime.fromtimestamp(1_700_000_000 + seconds, UTC)
    return RecoveryPoint(
        id=new_recovery_point_id(now),
        data_source=data_source,
        created_ns=int(now.timestamp() * 1e9),
        manifest_chunks=chunks,
        manifest_bytes=1234,
        entries=3,
        files=2,
        logical_bytes=99_000,
        labels={"group": f"{MARKER}-group"},
    )


def _manifest(sequence: int, segments: tuple[SegmentRef, ...] = ()) -> OnlineManifest:
    cid = ChunkId(hashlib.sha256(str(sequence).encode()).digest())
    return OnlineManifest(
        sequence=sequence,
        created_ns=sequence * 1000,
        data_source_id="ds-1",
        agent="agent-a",
        recovery_point=_rp("/srv/data", (cid,), sequence),
        index_segments=segments,
    )


def test_index_segment_round_trip(cipher: ObjectCipher, namer: ObjectNamer, tmp_path: Path) -> None:
    packs = []
    for _ in range(2):
        with PackWriter(cipher, namer.new_name(ObjectKind.PACK), tmp_path) as writer:
            for _ in range(3):
                chunk = encode_chunk(os.urandom(700), level=0)
                writer.add(chunk.id, chunk.frame)
            packs.append(writer.finish())
    segment = IndexSegment.of_packs((p.name, p.blobs) for p in packs)
    name = namer.new_name(ObjectKind.INDEX)
    sealed = segment.seal(cipher, name)
    opened = IndexSegment.open(cipher, name, sealed)
    assert opened == segment
    located = opened.as_dict()
    assert len(located) == 6
    for pack in packs:
        for ref in pack.blobs:
            assert located[ref.chunk_id].pack_name == pack.name
            assert located[ref.chunk_id].blob == ref
    with pytest.raises(TamperedObjectError):
        IndexSegment.open(cipher, namer.new_name(ObjectKind.INDEX), sealed)


def test_manifest_round_trip_and_pinned_segments(cipher: ObjectCipher, namer: ObjectNamer) -> None:
    seg_name = namer.new_name(ObjectKind.INDEX)
    seg_sealed = IndexSegment(()).seal(cipher, seg_name)
    manifest = _manifest(7, (SegmentRef.of(seg_name, seg_sealed),))
    name = namer.new_name(ObjectKind.MANIFEST)
    opened = OnlineManifest.open(cipher, name, manifest.seal(cipher, name))
    assert opened == manifest
    assert opened.recovery_point.labels["group"].startswith(MARKER)
    opened.index_segments[0].check(seg_sealed)
    # A different (older) segment under the pinned name is refused before it is opened.
    other = IndexSegment(()).seal(cipher, seg_name)
    with pytest.raises(TamperedObjectError, match=seg_name):
        opened.index_segments[0].check(other)


def test_an_older_manifest_under_a_newer_name_is_detected(
    cipher: ObjectCipher, namer: ObjectNamer
) -> None:
    old_name, new_name = namer.new_name(ObjectKind.MANIFEST), namer.new_name(ObjectKind.MANIFEST)
    old_sealed = _manifest(1).seal(cipher, old_name)
    with pytest.raises(TamperedObjectError, match=new_name):
        OnlineManifest.open(cipher, new_name, old_sealed)


def _committed(
    cipher: ObjectCipher, namer: ObjectNamer, count: int
) -> tuple[Catalog, dict[str, bytes]]:
    catalog = EMPTY_CATALOG
    objects: dict[str, bytes] = {}
    for _ in range(count):
        manifest = _manifest(catalog.next_sequence)
        name = namer.new_name(ObjectKind.MANIFEST)
        objects[name] = manifest.seal(cipher, name)
        catalog = catalog.adding([CatalogEntry.of(name, manifest, objects[name])], now_ns=1)
    return catalog, objects


def test_catalog_classifies_live_deleted_pending_and_refuses_resurrected(
    cipher: ObjectCipher, namer: ObjectNamer
) -> None:
    catalog, objects = _committed(cipher, namer, 3)
    names = list(objects)
    cat_name = namer.new_name(ObjectKind.CATALOG)
    catalog = Catalog.open(cipher, cat_name, catalog.seal(cipher, cat_name))
    assert catalog.generation == 3
    assert catalog.high_sequence == 3

    def status(cat: Catalog, name: str) -> ManifestStatus:
        return cat.status(name, OnlineManifest.open(cipher, name, objects[name]), objects[name])

    assert [status(catalog, n) for n in names] == [ManifestStatus.LIVE] * 3

    # A manifest written after the head catalog (crash before the commit) is pending.
    pending = namer.new_name(ObjectKind.MANIFEST)
    objects[pending] = _manifest(catalog.next_sequence).seal(cipher, pending)
    assert status(catalog, pending) is ManifestStatus.PENDING

    soft = catalog.deleting([names[0]], now_ns=5)
    assert status(soft, names[0]) is ManifestStatus.DELETED
    purged = soft.deleting([names[0]], now_ns=6, purge=True)
    assert purged.generation == catalog.generation + 2
    assert purged.missing(names[1:]) == ()
    # The purged manifest's bytes put back under its own name: an old sequence, unlisted.
    with pytest.raises(RollbackError, match="put back"):
        status(purged, names[0])
    # The listing lost a live manifest: the catalog names it.
    assert [e.name for e in catalog.missing(names[1:])] == [names[0]]


def test_a_rolled_back_catalog_is_refused_against_the_generation_seen(
    cipher: ObjectCipher, namer: ObjectNamer
) -> None:
    catalog, _ = _committed(cipher, namer, 2)
    older = Catalog(1, 1, 0, catalog.entries[:1])
    found = [("data/aa/old", older), ("data/bb/new", catalog)]
    assert select_head(found, min_generation=2) == ("data/bb/new", catalog)
    with pytest.raises(RollbackError, match="rolled back"):
        select_head(found[:1], min_generation=2)
    assert select_head([]) == ("", EMPTY_CATALOG)


def test_no_plaintext_or_chunk_hash_reaches_the_vault(
    cipher: ObjectCipher, namer: ObjectNamer, tmp_path: Path
) -> None:
    """A whole online backup's objects, scanned: no marker, no chunk id (hex or raw)."""
    header, _ = create_vault("a" * 16, now_ns=1, params=KDF_TESTING, min_params=KDF_TESTING)
    vault: dict[str, bytes] = {HEADER_NAME: header.to_json()}
    data = [f"{MARKER} file {i} ".encode() * 500 for i in range(6)]
    chunks = [encode_chunk(d, level=0) for d in data]  # raw frames: the marker is in them
    assert MARKER.encode() in chunks[0].frame

    with PackWriter(cipher, namer.new_name(ObjectKind.PACK), tmp_path, target_size=1) as writer:
        for chunk in chunks:
            writer.add(chunk.id, chunk.frame)
        pack = writer.finish()
    vault[pack.name] = pack.path.read_bytes()
    seg_name = namer.new_name(ObjectKind.INDEX)
    vault[seg_name] = IndexSegment.of_packs([(pack.name, pack.blobs)]).seal(cipher, seg_name)
    manifest = OnlineManifest(
        sequence=1,
        created_ns=1,
        data_source_id=f"{MARKER}-ds",
        agent=f"{MARKER}-agent",
        recovery_point=_rp(f"/{MARKER}/path", tuple(c.id for c in chunks[:2]), 1),
        index_segments=(SegmentRef.of(seg_name, vault[seg_name]),),
    )
    man_name = namer.new_name(ObjectKind.MANIFEST)
    vault[man_name] = manifest.seal(cipher, man_name)
    cat_name = namer.new_name(ObjectKind.CATALOG)
    entry = CatalogEntry.of(man_name, manifest, vault[man_name])
    vault[cat_name] = EMPTY_CATALOG.adding([entry], now_ns=1).seal(cipher, cat_name)

    needles = [MARKER.encode()]
    for chunk in chunks:
        needles += [chunk.id, chunk.id.hex().encode(), chunk.id.hex()[:16].encode()]
    for name, blob in vault.items():
        for needle in needles:
            assert needle not in name.encode(), name
            assert needle not in blob, name
    # And everything reads back: the round trip the scan is about.
    reader = PackReader(cipher, pack.name)
    frames = dict(reader.iter_frames(vault[pack.name]))
    assert [
        reader.blob_plaintext(ref, vault[pack.name][ref.offset : ref.offset + ref.length])
        for ref in frames
    ] == data
