"""The job ledger on a real disk: persisted before running, survives restarts, self-heals."""

from __future__ import annotations

import os
from pathlib import Path

from agent.job_ledger import JOBS_FILE, JobLedger


async def test_accept_once_and_persist(tmp_path: Path) -> None:
    ledger = JobLedger.load(tmp_path)
    assert await ledger.accept("j1", "backup", 100.0)
    assert not await ledger.accept("j1", "backup", 101.0)
    reopened = JobLedger.load(tmp_path)
    assert not await reopened.accept("j1", "backup", 102.0)
    assert [jid for jid, _ in reopened.interrupted()] == ["j1"]
    await reopened.finish("j1", "succeeded", 103.0)
    assert JobLedger.load(tmp_path).interrupted() == []
    assert (tmp_path / JOBS_FILE).stat().st_mode & 0o777 == 0o600


async def test_corrupt_file_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / JOBS_FILE).write_text("{not json")
    ledger = JobLedger.load(tmp_path)
    assert await ledger.accept("j2", "restore", 1.0)
    assert sum(name.startswith(f"{JOBS_FILE}.corrupt-") for name in os.listdir(tmp_path)) == 1


async def test_old_finished_records_are_pruned(tmp_path: Path) -> None:
    ledger = JobLedger.load(tmp_path)
    await ledger.accept("old", "backup", 0.0)
    await ledger.finish("old", "failed", 1.0)
    await ledger.accept("new", "backup", 40 * 24 * 3600.0)
    assert JobLedger.load(tmp_path).get("old") is None
    assert JobLedger.load(tmp_path).get("new") is not None
