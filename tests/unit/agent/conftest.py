"""Fixtures of the agent tests: the storage pool fixtures, reused (real pools, closed
and removed at teardown)."""

from tests.unit.pool.conftest import pool, pools

__all__ = ["pool", "pools"]
