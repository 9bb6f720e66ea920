"""Chunk framing (framing.py) and content-defined chunking (chunker.py): pure, no pool."""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from storage_pool import chunk_id_of, encode_chunk
from storage_pool import chunker as chunker_module
from storage_pool.chunker import Chunker, ChunkerParams
from storage_pool.framing import (
    CODEC_RAW,
    CODEC_ZSTD,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    FrameError,
    decode,
    decode_verified,
    encode,
)
from tests.unit.pool.sample_data import MiB, random_bytes, text_bytes

DEFAULTS = ChunkerParams()

# -------------------------------------------------------------------------- framing


def codec_of(frame: bytes) -> int:
    return frame[4]


@pytest.mark.parametrize("data", [b"", b"x", b"short text under 64 bytes"])
def test_tiny_chunks_round_trip_raw(data: bytes) -> None:
    """Guards against empty or tiny chunks breaking the frame (zstd is skipped below 64 B)."""
    frame = encode(data, 3)
    assert codec_of(frame) == CODEC_RAW
    assert len(frame) == HEADER_SIZE + len(data)
    assert decode(frame) == data


def test_level_zero_stores_raw() -> None:
    """Guards against compression level 0 still compressing (it means "off")."""
    data = text_bytes(256 * 1024, seed=1)
    frame = encode(data, 0)
    assert codec_of(frame) == CODEC_RAW
    assert frame[:3] == MAGIC
    assert decode(frame) == data


def test_compressible_data_round_trips_through_zstd() -> None:
    """Guards against the zstd path losing or altering bytes."""
    data = text_bytes(1 * MiB, seed=2)
    frame = encode(data, 3)
    assert codec_of(frame) == CODEC_ZSTD
    assert len(frame) < len(data) * 0.7
    assert decode(frame) == data
    chunk = encode_chunk(data, 3)
    assert chunk.id == hashlib.sha256(data).digest()
    assert chunk.size == len(data)
    assert decode_verified(chunk.frame, chunk.id) == data


def test_incompressible_data_is_stored_raw() -> None:
    """Guards against storing zstd frames that save nothing (and cost a decompress)."""
    data = random_bytes(1 * MiB, seed=3)
    frame = encode(data, 3)
    assert codec_of(frame) == CODEC_RAW
    assert len(frame) == HEADER_SIZE + len(data)
    assert decode(frame) == data


def _set_byte(index: int, value: int) -> Callable[[bytes], bytes]:
    def mutate(frame: bytes) -> bytes:
        return frame[:index] + bytes([value]) + frame[index + 1 :]

    return mutate


def _zstd_claiming(extra: int) -> Callable[[bytes], bytes]:
    """A zstd frame whose header announces `extra` more plaintext bytes than it holds."""

    def mutate(frame: bytes) -> bytes:
        _, _, codec, size, plen = HEADER.unpack_from(frame)
        assert codec == CODEC_ZSTD
        return HEADER.pack(MAGIC, 1, CODEC_ZSTD, size + extra, plen) + frame[HEADER_SIZE:]

    return mutate


def _garbage_zstd(frame: bytes) -> bytes:
    payload = b"\x00" * 200
    return HEADER.pack(MAGIC, 1, CODEC_ZSTD, 1000, len(payload)) + payload


def _hostile_size(frame: bytes) -> bytes:
    return HEADER.pack(MAGIC, 1, CODEC_ZSTD, 2**32 - 1, len(frame) - HEADER_SIZE) + frame[16:]


MALFORMED: list[tuple[str, bool, Callable[[bytes], bytes], str]] = [
    # (case, compressible input, mutation, expected message fragment)
    ("truncated", False, lambda f: f[:-1], "truncated or padded"),
    ("padded", False, lambda f: f + b"\0", "truncated or padded"),
    ("truncated zstd", True, lambda f: f[:-3], "truncated or padded"),
    ("shorter than header", False, lambda f: f[:10], "shorter than its 16-byte header"),
    ("empty file", False, lambda f: b"", "shorter than its 16-byte header"),
    ("bad magic", False, lambda f: b"SKX" + f[3:], "bad magic"),
    ("unknown version", False, _set_byte(3, 2), "unknown chunk frame version 2"),
    ("unknown codec", False, _set_byte(4, 7), "unknown codec 7"),
    ("raw lengths disagree", False, _set_byte(8, 1), "inconsistent lengths"),
    ("hostile plaintext size", True, _hostile_size, "inconsistent lengths"),
    ("zstd payload garbage", True, _garbage_zstd, "does not decompress"),
    ("zstd shorter than announced", True, _zstd_claiming(1), "decompressed to"),
]


@pytest.mark.parametrize(
    ("compressible", "mutate", "message"),
    [pytest.param(c, m, msg, id=case) for case, c, m, msg in MALFORMED],
)
def test_malformed_frame_is_refused_with_reason(
    compressible: bool, mutate: Callable[[bytes], bytes], message: str
) -> None:
    """Guards against a damaged or hostile chunk file decoding to wrong bytes, crashing
    with something other than FrameError, or failing without saying what is wrong."""
    data = text_bytes(64 * 1024, seed=4) if compressible else random_bytes(4096, seed=4)
    frame = encode(data, 3)
    assert codec_of(frame) == (CODEC_ZSTD if compressible else CODEC_RAW)
    with pytest.raises(FrameError, match=message):
        decode(mutate(frame))


def test_decode_verified_rejects_content_of_another_id() -> None:
    """Guards against trusting a well-formed frame whose content is not what its id names
    (a swapped or bit-rotten chunk that still has a valid header)."""
    good = encode_chunk(b"the real content" * 100, 3)
    other = chunk_id_of(b"what the file name claims")
    with pytest.raises(FrameError, match="not to its id"):
        decode_verified(good.frame, other)
    flipped = bytearray(encode(random_bytes(4096, seed=5), 3))
    flipped[-1] ^= 0x01  # a raw frame: the header stays valid, the content changes
    with pytest.raises(FrameError, match="not to its id"):
        decode_verified(bytes(flipped), chunk_id_of(random_bytes(4096, seed=5)))


def test_frame_error_is_a_value_error() -> None:
    """Guards the documented contract that FrameError can be caught as ValueError."""
    assert issubclass(FrameError, ValueError)
    assert struct.calcsize("<3sBB3xII") == HEADER_SIZE == 16


# -------------------------------------------------------------------------- chunker


def cut_whole(data: bytes) -> list[tuple[int, bytes]]:
    return [(len(v), hashlib.sha256(v).digest()) for v in Chunker(DEFAULTS).cut(data)]


def cut_file(fd: int, size_hint: int) -> list[tuple[int, bytes]]:
    # The views die when the generator resumes: hash each one at once.
    out: list[tuple[int, bytes]] = []
    for block in Chunker(DEFAULTS).cut_fd(fd, size_hint):
        out.extend((len(v), hashlib.sha256(v).digest()) for v in block)
    return out


SIZES: dict[str, Callable[[], bytes]] = {
    "empty": lambda: b"",
    "100 B": lambda: random_bytes(100, seed=6),
    "min_size": lambda: random_bytes(DEFAULTS.min_size, seed=7),
    "min_size+1": lambda: random_bytes(DEFAULTS.min_size + 1, seed=7),
    "8 MiB+1": lambda: random_bytes(8 * MiB + 1, seed=8),
    "30 MiB random": lambda: random_bytes(30 * MiB, seed=9),
    "20 MiB zeros": lambda: bytes(20 * MiB),
    "24 MiB text": lambda: text_bytes(24 * MiB, seed=10),
}


@pytest.mark.parametrize("hint", ["exact", "unknown"])
@pytest.mark.parametrize("case", list(SIZES))
def test_cut_fd_matches_cutting_the_whole_buffer(tmp_path: Path, case: str, hint: str) -> None:
    """Guards the block carry-over in cut_fd: reading a file in blocks must give the very
    boundaries of cutting it in one piece, or dedup between agents (which cut buffers)
    and local ingest (which cuts files) is lost."""
    data = SIZES[case]()
    path = tmp_path / "data"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        got = cut_file(fd, len(data) if hint == "exact" else 0)
    finally:
        os.close(fd)
    expected = cut_whole(data)
    assert got == expected
    assert sum(n for n, _ in got) == len(data)
    assert all(n <= DEFAULTS.max_size for n, _ in got)


def test_cut_fd_handles_short_reads_from_a_pipe() -> None:
    """Guards against boundaries that depend on how many bytes each read returns (a pipe
    or network filesystem hands back short reads)."""
    data = random_bytes(20 * MiB, seed=11)
    rfd, wfd = os.pipe()

    def feed() -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(wfd, view[:100_000]) :]
        finally:
            os.close(wfd)

    writer = threading.Thread(target=feed, name="pipe-feeder")
    writer.start()
    try:
        got = cut_file(rfd, 0)
    finally:
        writer.join()
        os.close(rfd)
    assert got == cut_whole(data)


BAD_PARAMS: list[tuple[dict[str, Any], str]] = [
    ({"algorithm": "rabin"}, "unknown chunking algorithm"),
    ({"min_size": 63}, "min_size 63 outside"),
    ({"min_size": 2 * MiB, "avg_size": 4 * MiB}, "min_size .* outside"),
    ({"avg_size": 255, "min_size": 64}, "avg_size 255 outside"),
    ({"avg_size": 5 * MiB}, "avg_size .* outside"),
    ({"max_size": 16 * MiB + 1}, "max_size .* outside"),
    ({"max_size": 512 * 1024}, "max_size .* outside"),
    ({"min_size": 512 * 1024, "avg_size": 256 * 1024}, "min_size must not exceed avg_size"),
    ({"normalization": 4}, "normalization 4 not in 0..3"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_PARAMS, ids=[m for _, m in BAD_PARAMS])
def test_chunker_params_are_validated(kwargs: dict[str, Any], message: str) -> None:
    """Guards against a pool being created (or a config read) with chunker parameters the
    library misbehaves on; the error must name the parameter."""
    with pytest.raises(ValueError, match=message):
        ChunkerParams(**kwargs)


def test_chunker_params_round_trip_through_dict() -> None:
    """Guards config.json: the parameters written are the parameters read back."""
    params = ChunkerParams(min_size=64 * 1024, avg_size=256 * 1024, max_size=1 * MiB, seed=7)
    assert ChunkerParams.from_dict(params.to_dict()) == params
    with pytest.raises(TypeError):
        ChunkerParams.from_dict({**params.to_dict(), "window": 48})


def test_small_params_give_small_chunks() -> None:
    """Guards against the parameters being ignored by the chunker."""
    params = ChunkerParams(min_size=1024, avg_size=4096, max_size=16 * 1024)
    sizes = [len(v) for v in Chunker(params).cut(random_bytes(1 * MiB, seed=12))]
    assert len(sizes) > 100
    assert all(n <= 16 * 1024 for n in sizes)
    assert all(n >= 1024 for n in sizes[:-1])


def test_compiled_fastcdc_is_in_use() -> None:
    """Guards against running on pyfastcdc's pure-Python fallback (~100x slower)."""
    fastcdc: Any = vars(chunker_module)["FastCDC"]
    assert fastcdc.__module__.startswith("pyfastcdc.cy"), fastcdc.__module__
