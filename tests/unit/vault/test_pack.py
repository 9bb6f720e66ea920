"""Packs: streamed to the scratch area, read back by ranged reads, verified per blob."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage_pool.framing import encode_chunk
from storage_pool.ids import ChunkId
from storage_pool.vault.crypto import ObjectCipher
from storage_pool.vault.format import ObjectKind
from storage_pool.vault.format_errors import ObjectFormatError, TamperedObjectError
from storage_pool.vault.names import ObjectNamer
from storage_pool.vault.pack import (
    TAIL,
    BlobRef,
    FinishedPack,
    PackReader,
    PackWriter,
    pack_name_of_scratch_file,
    trailer_span,
)
from storage_pool.vault.sealed_doc import seal_doc


def _chunks(count: int, tag: str) -> list[tuple[ChunkId, bytes, bytes]]:
    out = []
    for i in range(count):
        # Half compressible, half random: both frame codecs go through the pack.
        data = (f"{tag}-{i} ".encode() * 2000) if i % 2 else os.urandom(5000 + i)
        chunk = encode_chunk(data, level=3)
        out.append((chunk.id, chunk.frame, data))
    return out


def _write(
    cipher: ObjectCipher,
    namer: ObjectNamer,
    scratch: Path,
    chunks: list[tuple[ChunkId, bytes, bytes]],
) -> FinishedPack:
    with PackWriter(cipher, namer.new_name(ObjectKind.PACK), scratch, target_size=1 << 20) as w:
        for cid, frame, _ in chunks:
            w.add(cid, frame)
        return w.finish()


def _ranged(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


def test_ranged_reads_return_verified_chunks(
    cipher: ObjectCipher, namer: ObjectNamer, tmp_path: Path
) -> None:
    chunks = _chunks(9, "ranged")
    pack = _write(cipher, namer, tmp_path, chunks)
    assert pack.path.exists()
    assert pack.size == pack.path.stat().st_size
    assert pack_name_of_scratch_file(pack.path) == pack.name
    assert not list(tmp_path.glob("*.partial"))

    reader = PackReader(cipher, pack.name)
    tail = _ranged(pack.path, pack.size - TAIL.size, TAIL.size)
    span = trailer_span(pack.name, tail)
    trailer = reader.trailer(_ranged(pack.path, pack.size - span, span), pack_size=pack.size)
    assert trailer == pack.blobs
    for (cid, frame, data), ref in zip(chunks, trailer, strict=True):
        assert ref.chunk_id == cid
        raw = _ranged(pack.path, ref.offset, ref.length)
        assert reader.blob_plaintext(ref, raw) == data
        assert reader.blob_frame(ref, raw) == frame
    # A longer suffix (one ranged GET of the last 64 KiB) works too.
    assert reader.trailer(_ranged(pack.path, max(0, pack.size - 65536), 65536)) == trailer
    whole = pack.path.read_bytes()
    assert [ref for ref, _ in reader.iter_frames(whole)] == list(trailer)


def test_writer_reports_full_and_refuses_duplicates(
    cipher: ObjectCipher, namer: ObjectNamer, tmp_path: Path
) -> None:
    chunks = _chunks(4, "full")
    writer = PackWriter(cipher, namer.new_name(ObjectKind.PACK), tmp_path, target_size=9_000)
    writer.add(chunks[0][0], chunks[0][1])
    assert not writer.full
    assert chunks[0][0] in writer
    with pytest.raises(ValueError, match="already in pack"):
        writer.add(chunks[0][0], chunks[0][1])
    writer.add(chunks[2][0], chunks[2][1])
    assert writer.full
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_writer_leaves_no_pack_file(
    cipher: ObjectCipher, namer: ObjectNamer, tmp_path: Path
) -> None:
    chunks = _chunks(2, "boom")
    with (
        pytest.raises(RuntimeError),
        PackWriter(cipher, namer.new_name(ObjectKind.PACK), tmp_path) as w,
    ):
        w.add(chunks[0][0], chunks[0][1])
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_tampered_blobs_are_refused_by_name(
    cipher: ObjectCipher, namer: ObjectNamer, tmp_path: Path
) -> None:
    (one, two) = (tmp_path / "a", tmp_path / "b")
    one.mkdir()
    two.mkdir()
    pack_a = _write(cipher, namer, one, _chunks(3, "a"))
    pack_b = _write(cipher, namer, two, _chunks(3, "b"))
    reader_a = PackReader(cipher, pack_a.name)
    ref0, ref1 = pack_a.blobs[0], pack_a.blobs[1]
    raw0 = _ranged(pack_a.path, ref0.offset, ref0.length)
    raw1 = _ranged(pack_a.path, ref1.offset, ref1.length)

    flipped = bytearray(raw0)
    flipped[len(flipped) // 2] ^= 0x80
    cases: list[tuple[BlobRef, bytes]] = [
        (ref0, bytes(flipped)),
        (ref0, raw0[:-1]),
        (ref0, raw1[: ref0.length].ljust(ref0.length, b"\0")),  # another blob, same pack
        # the same chunk's blob moved under another pack's name
        (pack_b.blobs[0], _ranged(pack_b.path, pack_b.blobs[0].offset, pack_b.blobs[0].length)),
        # an index pointing a blob at the wrong chunk id
        (BlobRef(ref1.chunk_id, ref0.offset, ref0.length), raw0),
    ]
    for ref, data in cases:
        with pytest.raises(TamperedObjectError, match=pack_a.name):
            reader_a.blob_plaintext(ref, data)


def test_truncated_or_swapped_packs_are_refused(
    cipher: ObjectCipher, namer: ObjectNamer, tmp_path: Path
) -> None:
    pack = _write(cipher, namer, tmp_path, _chunks(3, "t"))
    whole = pack.path.read_bytes()
    reader = PackReader(cipher, pack.name)
    with pytest.raises(TamperedObjectError, match="truncated"):
        reader.trailer(whole[:-1])
    with pytest.raises(TamperedObjectError):
        reader.trailer(whole[:-3] + b"XYZ")
    # Bytes cut from the middle: the trailer authenticates but no longer fits the size.
    cut = whole[:10] + whole[20:]
    with pytest.raises(TamperedObjectError, match="blobs end at"):
        reader.trailer(cut, pack_size=len(cut))
    with pytest.raises(TamperedObjectError):
        list(reader.iter_frames(cut))
    # The whole pack stored under another pack's name.
    with pytest.raises(TamperedObjectError):
        PackReader(cipher, namer.new_name(ObjectKind.PACK)).trailer(whole)


def test_a_frame_that_is_not_a_frame_is_refused_at_write(
    cipher: ObjectCipher, namer: ObjectNamer, tmp_path: Path
) -> None:
    with PackWriter(cipher, namer.new_name(ObjectKind.PACK), tmp_path) as writer:
        with pytest.raises(ValueError, match="bad magic"):
            writer.add(ChunkId(b"\0" * 32), b"plain bytes, not a frame")
        with pytest.raises(ValueError, match="no blobs"):
            writer.finish()
        writer.abort()


def test_a_malformed_trailer_is_a_format_error(cipher: ObjectCipher, namer: ObjectNamer) -> None:
    name = namer.new_name(ObjectKind.PACK)
    sealed = seal_doc(cipher, ObjectKind.TRAILER, name, {"v": 1, "blobs": [[b"x", 0, 99]]})
    with pytest.raises(ObjectFormatError, match="malformed blob row"):
        PackReader(cipher, name).trailer(sealed + TAIL.pack(len(sealed), b"SKP1"))
