"""Fixtures of the end-to-end tests: a running server (own Mosquitto) per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import Stack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack.start(tmp_path)
    try:
        yield s
    finally:
        s.close()
