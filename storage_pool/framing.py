"""Chunk framing: how one chunk is laid out in its file (pure, no I/O).

    offset  size  field
    0       3     magic b"SKC"
    3       1     frame version (1)
    4       1     codec: 0 = raw, 1 = zstd
    5       3     reserved, zero
    8       4     plaintext length, little-endian u32
    12      4     payload length, little-endian u32
    16      n     payload (the plaintext, or its zstd frame)

A file whose size is not 16 + payload length is truncated or padded; the plaintext's
SHA-256 must equal the chunk id (the file name). zstd is kept only when it saves at least
1/64 of the bytes: incompressible data is stored raw and costs nothing to read back.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

import zstandard

from storage_pool.ids import ChunkId, chunk_id_of

MAGIC = b"SKC"
FRAME_VERSION = 1
CODEC_RAW = 0
CODEC_ZSTD = 1
HEADER = struct.Struct("<3sBB3xII")
HEADER_SIZE = HEADER.size
MAX_CHUNK_SIZE = 64 * 1024 * 1024  # far above the chunker's max; bounds hostile headers

_local = threading.local()


class FrameError(ValueError):
    """The bytes are not a valid chunk frame; the message says why."""


@dataclass(frozen=True, slots=True)
class EncodedChunk:
    """A chunk ready to be stored: its id, its frame and its plaintext length."""

    id: ChunkId
    frame: bytes
    size: int


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # zstd contexts are not thread-safe; each worker thread keeps its own per level.
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    dec: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if dec is None:
        dec = _local.decompressor = zstandard.ZstdDecompressor()
    return dec


def encode(data: bytes | bytearray | memoryview, level: int) -> bytes:
    """Frame `data`; level 0 disables compression."""
    size = len(data)
    if size > MAX_CHUNK_SIZE:
        raise FrameError(f"chunk of {size} bytes exceeds the {MAX_CHUNK_SIZE}-byte limit")
    if level > 0 and size >= 64:
        packed = _compressor(level).compress(data)
        if len(packed) <= size - (size >> 6):
            return HEADER.pack(MAGIC, FRAME_VERSION, CODEC_ZSTD, size, len(packed)) + packed
    return b"".join((HEADER.pack(MAGIC, FRAME_VERSION, CODEC_RAW, size, size), data))


def encode_chunk(data: bytes | bytearray | memoryview, level: int) -> EncodedChunk:
    return EncodedChunk(chunk_id_of(data), encode(data, level), len(data))


def read_header(frame: bytes | memoryview) -> tuple[int, int, int]:
    """Return (codec, plaintext length, payload length); FrameError if malformed."""
    if len(frame) < HEADER_SIZE:
        raise FrameError(f"frame is {len(frame)} bytes, shorter than its {HEADER_SIZE}-byte header")
    magic, version, codec, size, plen = HEADER.unpack_from(frame)
    if magic != MAGIC:
        raise FrameError("not a Stockade chunk (bad magic)")
    if version != FRAME_VERSION:
        raise FrameError(f"unknown chunk frame version {version}")
    if codec not in (CODEC_RAW, CODEC_ZSTD):
        raise FrameError(f"unknown codec {codec}")
    if size > MAX_CHUNK_SIZE or (codec == CODEC_RAW and plen != size):
        raise FrameError(f"inconsistent lengths (plaintext {size}, payload {plen})")
    if len(frame) != HEADER_SIZE + plen:
        raise FrameError(
            f"frame is {len(frame)} bytes but its header announces {HEADER_SIZE + plen}"
            " (truncated or padded)"
        )
    return codec, size, plen


def decode(frame: bytes) -> bytes:
    """Return the plaintext of a frame, checking lengths (not the hash)."""
    codec, size, _ = read_header(frame)
    payload = memoryview(frame)[HEADER_SIZE:]
    if codec == CODEC_RAW:
        return bytes(payload)
    try:
        data = _decompressor().decompress(payload, max_output_size=size)
    except zstandard.ZstdError as err:
        raise FrameError(f"zstd payload does not decompress: {err}") from err
    if len(data) != size:
        raise FrameError(f"decompressed to {len(data)} bytes, header says {size}")
    return data


def decode_verified(frame: bytes, expected: ChunkId) -> bytes:
    """Decode and check that the plaintext hashes to `expected`."""
    data = decode(frame)
    actual = chunk_id_of(data)
    if actual != expected:
        raise FrameError(f"content hashes to {actual.hex()}, not to its id")
    return data
