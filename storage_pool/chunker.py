"""Content-defined chunking with FastCDC 2020 (pyfastcdc's compiled extension).

The parameters are fixed when a pool is created and recorded in its config: boundaries
depend on the library and its parameters, so changing either after data is stored would
cost all deduplication. The pure-Python fallback of pyfastcdc runs at ~10 MB/s, two
orders of magnitude below the compiled path; importing this module fails rather than
silently backing up at that speed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

try:  # the compiled extension, imported directly: no silent fallback
    from pyfastcdc.cy import FastCDC
except ImportError as _err:  # pragma: no cover - depends on the wheel
    raise ImportError(
        "pyfastcdc's compiled extension (pyfastcdc.cy) is not importable; Stockade refuses to"
        " run on its pure-Python fallback (~10 MB/s). Reinstall pyfastcdc from a binary wheel."
    ) from _err

KiB = 1024
MiB = 1024 * KiB
READ_BLOCK = 8 * MiB


@dataclass(frozen=True, slots=True)
class ChunkerParams:
    """FastCDC 2020 parameters. The real mean chunk is about avg_size + min_size."""

    algorithm: str = "fastcdc2020"
    min_size: int = 256 * KiB
    avg_size: int = 1 * MiB
    max_size: int = 8 * MiB
    normalization: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algorithm != "fastcdc2020":
            raise ValueError(f"unknown chunking algorithm {self.algorithm!r}")
        if not 64 <= self.min_size <= 1 * MiB:
            raise ValueError(f"min_size {self.min_size} outside 64 B .. 1 MiB")
        if not 256 <= self.avg_size <= 4 * MiB:
            raise ValueError(f"avg_size {self.avg_size} outside 256 B .. 4 MiB")
        if not max(1024, self.avg_size) <= self.max_size <= 16 * MiB:
            raise ValueError(f"max_size {self.max_size} outside avg_size .. 16 MiB")
        if not self.min_size <= self.avg_size:
            raise ValueError("min_size must not exceed avg_size")
        if self.normalization not in (0, 1, 2, 3):
            raise ValueError(f"normalization {self.normalization} not in 0..3")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ChunkerParams:
        return cls(**raw)


class Chunker:
    """Cuts byte streams into content-defined chunks. Not thread-safe: one per thread."""

    def __init__(self, params: ChunkerParams) -> None:
        self.params = params
        self._cdc = FastCDC(
            params.avg_size,
            min_size=params.min_size,
            max_size=params.max_size,
            normalized_chunking=params.normalization,
            seed=params.seed,
        )

    def cut(self, buf: bytes | bytearray | memoryview) -> Iterator[memoryview]:
        """Cut a whole in-memory buffer; yields views into `buf`."""
        view = memoryview(buf)
        for c in self._cdc.cut_buf(view):
            yield view[c.offset : c.offset + c.length]

    def cut_fd(self, fd: int, size_hint: int = 0) -> Iterator[list[memoryview]]:
        """Cut the rest of an open file into chunks, yielding them a block at a time.

        The views in each yielded list point into one reused buffer and are valid only
        until the generator is resumed: consume (hash, store) them before asking for
        more. A file no larger than min_size is one chunk and is read in one go. The
        unfinished tail of each block is carried to the next, which gives exactly the
        boundaries of cutting the whole file at once.
        """
        if 0 < size_hint <= self.params.min_size:
            data = _read_all(fd, size_hint)
            if data:
                yield [memoryview(data)]
            return
        buf = bytearray(READ_BLOCK + self.params.max_size)
        view = memoryview(buf)
        have = 0
        eof = False
        while not eof:
            while have < len(buf):
                n = os.readv(fd, [view[have:]])
                if n == 0:
                    eof = True
                    break
                have += n
            if have == 0:
                break
            chunks: list[memoryview] = []
            for c in self._cdc.cut_buf(view[:have]):
                chunks.append(view[c.offset : c.offset + c.length])
            # The last cut may be only where the buffer ended: carry it into the next
            # round, unless it is final (end of file, or a forced max-size cut).
            carry = 0
            if not eof and chunks and len(chunks[-1]) < self.params.max_size:
                carry = len(chunks.pop())
            if chunks:
                yield chunks
            chunks.clear()
            if carry:
                buf[:carry] = buf[have - carry : have]
            have = carry


def _read_all(fd: int, size_hint: int) -> bytes:
    parts = []
    want = size_hint
    while True:
        part = os.read(fd, max(want, 64 * KiB))
        if not part:
            break
        parts.append(part)
        want = 64 * KiB
    return b"".join(parts)
