"""Pack objects: many sealed chunk frames, then a sealed trailer (layout in format.py).

    blob_0 | blob_1 | ... | sealed trailer | trailer length (u32 LE) | b"SKP1"

A blob is the pool's frame of one chunk (framing.py), sealed as kind "blob" with object
id ``<pack name>:<chunk id hex>``; the trailer, sealed as kind "trailer" under the pack
name, is msgpack ``{"v": 1, "blobs": [[chunk id (32 bytes), offset, length], ...]}``
with offsets contiguous from 0. Reading a blob checks its AEAD, then decodes the frame
and checks that the plaintext hashes to the chunk id it was fetched for.

`PackWriter` streams to ``<scratch>/<hex>.partial`` (one blob in memory at a time),
then renames it to ``<hex>.pack``, so a ``.pack`` file was complete when it was named.
With ``fsync=True`` (the default) the file and the folder are fsynced first and a
``.pack`` stays complete across a power loss. The online uploader passes
``fsync=False``: a scratch pack is re-creatable from the pool, and a ``.pack`` that an
OS crash left with lost blocks is recognised before it is adopted (its trailer must
authenticate and cover the file exactly, and every blob must authenticate and hash to
its chunk id: uploader.py). Writer and reader are blocking; call them from an executor.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from storage_pool.framing import FrameError, decode_verified, read_header
from storage_pool.ids import CHUNK_ID_LEN, ChunkId, as_chunk_id
from storage_pool.vault.crypto import OVERHEAD, ObjectCipher
from storage_pool.vault.format import DATA_PREFIX, ObjectKind
from storage_pool.vault.format_errors import ObjectFormatError, TamperedObjectError
from storage_pool.vault.sealed_doc import decode_doc, seal_doc

DEFAULT_PACK_SIZE = 32 * 1024 * 1024
TAIL = struct.Struct("<I4s")
TAIL_MAGIC = b"SKP1"
TRAILER_VERSION = 1
MAX_TRAILER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BlobRef:
    """Where one chunk's sealed frame sits in a pack."""

    chunk_id: ChunkId
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class FinishedPack:
    name: str
    path: Path
    size: int
    sha256: bytes
    blobs: tuple[BlobRef, ...]


def blob_object_id(pack_name: str, chunk_id: ChunkId) -> str:
    return f"{pack_name}:{chunk_id.hex()}"


def scratch_stem(pack_name: str) -> str:
    """The file stem a pack takes in the scratch area (its name's hex part)."""
    return pack_name.rsplit("/", 1)[-1]


def pack_name_of_scratch_file(path: Path) -> str:
    stem = path.name.removesuffix(".pack")
    return f"{DATA_PREFIX}{stem[:2]}/{stem}"


class PackWriter:
    """Builds one pack file in the scratch area; `finish` seals the trailer."""

    def __init__(
        self,
        cipher: ObjectCipher,
        pack_name: str,
        scratch_dir: Path,
        *,
        target_size: int = DEFAULT_PACK_SIZE,
        fsync: bool = True,
    ) -> None:
        if target_size <= 0:
            raise ValueError("target_size must be positive")
        self.name = pack_name
        self.target_size = target_size
        self._cipher = cipher
        self._fsync = fsync
        stem = scratch_stem(pack_name)
        self.path = scratch_dir / f"{stem}.pack"
        self._partial = scratch_dir / f"{stem}.partial"
        self._file: IO[bytes] | None = open(self._partial, "xb")  # noqa: SIM115 - closed in finish/abort
        self._hash = hashlib.sha256()
        self._blobs: list[BlobRef] = []
        self._ids: set[ChunkId] = set()
        self.size = 0

    @property
    def full(self) -> bool:
        return self.size >= self.target_size

    @property
    def blob_count(self) -> int:
        return len(self._blobs)

    def __contains__(self, chunk_id: ChunkId) -> bool:
        return chunk_id in self._ids

    def _write(self, data: bytes) -> None:
        if self._file is None:
            raise ValueError(f"pack {self.name} is already finished or aborted")
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def add(self, chunk_id: ChunkId, frame: bytes) -> BlobRef:
        """Seal and append one chunk frame (as read from the pool, not re-hashed here)."""
        if chunk_id in self._ids:
            raise ValueError(f"chunk {chunk_id.hex()} is already in pack {self.name}")
        read_header(frame)  # a malformed frame would only be noticed at restore time
        sealed = self._cipher.seal(ObjectKind.BLOB, blob_object_id(self.name, chunk_id), frame)
        ref = BlobRef(chunk_id, self.size, len(sealed))
        self._write(sealed)
        self._blobs.append(ref)
        self._ids.add(chunk_id)
        return ref

    def add_many(self, items: Iterable[tuple[ChunkId, bytes]]) -> list[BlobRef]:
        """`add` each (chunk id, frame) in order: one executor hop for a batch of blobs."""
        return [self.add(cid, frame) for cid, frame in items]

    @staticmethod
    def sealed_size(frame_len: int) -> int:
        """How many bytes `add` grows the pack by for a frame of `frame_len` bytes."""
        return frame_len + OVERHEAD

    def finish(self) -> FinishedPack:
        if not self._blobs:
            raise ValueError(f"pack {self.name} has no blobs")
        doc = {
            "v": TRAILER_VERSION,
            "blobs": [[b.chunk_id, b.offset, b.length] for b in self._blobs],
        }
        sealed = seal_doc(self._cipher, ObjectKind.TRAILER, self.name, doc)
        self._write(sealed)
        self._write(TAIL.pack(len(sealed), TAIL_MAGIC))
        assert self._file is not None
        file, self._file = self._file, None
        with file:
            file.flush()
            if self._fsync:
                os.fsync(file.fileno())
        os.replace(self._partial, self.path)
        if self._fsync:
            _fsync_dir(self.path.parent)
        return FinishedPack(
            self.name, self.path, self.size, self._hash.digest(), tuple(self._blobs)
        )

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._partial.unlink(missing_ok=True)

    def __enter__(self) -> PackWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self.abort()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def trailer_span(pack_name: str, tail: bytes) -> int:
    """From the last `TAIL.size` bytes of a pack: how many bytes from the end to fetch."""
    if len(tail) < TAIL.size:
        raise TamperedObjectError(
            pack_name, ObjectKind.PACK, "shorter than a pack tail (truncated)"
        )
    length, magic = TAIL.unpack(tail[-TAIL.size :])
    if magic != TAIL_MAGIC:
        raise TamperedObjectError(
            pack_name, ObjectKind.PACK, "no pack tail (truncated or not a pack)"
        )
    if not OVERHEAD <= length <= MAX_TRAILER_BYTES:
        raise TamperedObjectError(
            pack_name, ObjectKind.PACK, f"implausible trailer length {length}"
        )
    return int(length) + TAIL.size


class PackReader:
    """Reads the trailer and the blobs of one pack from bytes fetched by the caller."""

    __slots__ = ("_cipher", "name")

    def __init__(self, cipher: ObjectCipher, pack_name: str) -> None:
        self._cipher = cipher
        self.name = pack_name

    def trailer(self, suffix: bytes, *, pack_size: int | None = None) -> tuple[BlobRef, ...]:
        """The blob list from the last bytes of the pack (at least `trailer_span` of them).

        With `pack_size`, also checks that the blobs exactly fill the pack before the
        trailer, so a pack truncated or extended in the middle is refused.
        """
        span = trailer_span(self.name, suffix)
        if len(suffix) < span:
            raise ValueError(f"need the last {span} bytes of pack {self.name}, got {len(suffix)}")
        sealed = suffix[len(suffix) - span : len(suffix) - TAIL.size]
        plain = self._cipher.open(ObjectKind.TRAILER, self.name, sealed)
        blobs = _decode_trailer(self.name, plain)
        end = blobs[-1].offset + blobs[-1].length
        if pack_size is not None and end != pack_size - span:
            raise TamperedObjectError(
                self.name,
                ObjectKind.PACK,
                f"blobs end at {end} but the trailer starts at {pack_size - span}",
            )
        return blobs

    def blob_frame(self, ref: BlobRef, data: bytes | memoryview) -> bytes:
        """The verified pool frame of one blob, from exactly its `ref.length` bytes."""
        what = blob_object_id(self.name, ref.chunk_id)
        if len(data) != ref.length:
            raise TamperedObjectError(
                what, ObjectKind.BLOB, f"{len(data)} bytes, the trailer says {ref.length}"
            )
        frame = self._cipher.open(ObjectKind.BLOB, what, data)
        try:
            decode_verified(frame, ref.chunk_id)
        except FrameError as err:
            raise TamperedObjectError(what, ObjectKind.BLOB, str(err)) from err
        return frame

    def blob_plaintext(self, ref: BlobRef, data: bytes | memoryview) -> bytes:
        """The verified chunk plaintext of one blob."""
        what = blob_object_id(self.name, ref.chunk_id)
        if len(data) != ref.length:
            raise TamperedObjectError(
                what, ObjectKind.BLOB, f"{len(data)} bytes, the trailer says {ref.length}"
            )
        frame = self._cipher.open(ObjectKind.BLOB, what, data)
        try:
            return decode_verified(frame, ref.chunk_id)
        except FrameError as err:
            raise TamperedObjectError(what, ObjectKind.BLOB, str(err)) from err

    def iter_frames(self, pack: bytes) -> Iterator[tuple[BlobRef, bytes]]:
        """Every (ref, verified frame) of a whole pack, in order."""
        view = memoryview(pack)
        for ref in self.trailer(pack, pack_size=len(pack)):
            yield ref, self.blob_frame(ref, view[ref.offset : ref.offset + ref.length])


def _decode_trailer(pack_name: str, plain: bytes) -> tuple[BlobRef, ...]:
    doc = decode_doc(ObjectKind.TRAILER, pack_name, plain, TRAILER_VERSION)
    rows = doc.get("blobs")
    if not isinstance(rows, list) or not rows:
        raise ObjectFormatError(pack_name, ObjectKind.TRAILER, "no blobs")
    blobs: list[BlobRef] = []
    expected = 0
    for row in rows:
        if (
            not isinstance(row, list)
            or len(row) != 3
            or not isinstance(row[0], bytes)
            or len(row[0]) != CHUNK_ID_LEN
            or type(row[1]) is not int
            or type(row[2]) is not int
        ):
            raise ObjectFormatError(
                pack_name, ObjectKind.TRAILER, f"malformed blob row {row!r:.80}"
            )
        if row[1] != expected or row[2] < OVERHEAD:
            raise ObjectFormatError(
                pack_name,
                ObjectKind.TRAILER,
                f"blob at {row[1]} (length {row[2]}) is not contiguous from {expected}",
            )
        blobs.append(BlobRef(as_chunk_id(row[0]), row[1], row[2]))
        expected = row[1] + row[2]
    return tuple(blobs)
