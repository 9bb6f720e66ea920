"""Deterministic test data: random (incompressible) and text (compressible) bytes.

Seeded, so a failure reproduces with the same bytes.
"""

from __future__ import annotations

import random
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB


def random_bytes(size: int, seed: int) -> bytes:
    """Incompressible bytes: zstd cannot shrink them, FastCDC finds natural cuts."""
    return random.Random(seed).randbytes(size)


def text_bytes(size: int, seed: int) -> bytes:
    """Unique but compressible text (hex lines, about 2:1 under zstd)."""
    raw = random.Random(seed).randbytes(size // 2 + 32).hex("\n", 32).encode()
    return raw[:size]


def write_file(path: Path, data: bytes, *, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        path.chmod(mode)
    return path
