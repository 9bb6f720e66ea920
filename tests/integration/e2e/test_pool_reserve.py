"""The pool's free-space reserve end to end, on a real 64 MiB tmpfs.

A backup of incompressible data crosses the reserve mid-run: the job fails with the
reserve message, no recovery point appears, the pool_reserve alert opens and a new
Start-Backup is refused at once. Once space is freed, the next backup succeeds and the
alert resolves itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import ServerProc, Stack
from tests.support.tmpfs import mounted_tmpfs

MiB = 1 << 20
TMPFS_BYTES = 64 * MiB
RESERVE_BYTES = 16 * MiB
# Filler + reserve leave ~27 MiB for backups; the data is 40 MiB of random bytes, so the
# first backup crosses the reserve and the second (after the filler goes, with most of
# its chunks already stored) ends with ~23 MiB free, above it.
FILLER_BYTES = 20 * MiB
DATA_FILES = 40
FILE_BYTES = 1 * MiB
REFUSED = "under its reserve of 16.0 MiB: new backups are refused until space is freed"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "small-fs", TMPFS_BYTES) as mnt:
        yield mnt


@pytest.fixture
def small_stack(tmp_path: Path, small_fs: Path) -> Iterator[Stack]:
    server = ServerProc(
        tmp_path,
        extra=[
            "--set",
            f"pool.path={small_fs / 'pool'}",
            "--set",
            f"pool.reserve_bytes={RESERVE_BYTES}",
            "--set",
            "pool.reserve_percent=0",
        ],
    )
    stack = Stack(tmp_path, server)
    try:
        server.start()
        yield stack
    finally:
        stack.close()  # before the tmpfs goes


def _pool_alerts(stack: Stack, *extra: str) -> list[dict[str, object]]:
    alerts = stack.cli("Get-Alert", "-Json", *extra, check=True).json()
    return [a for a in alerts if a["kind"] == "pool_reserve"]


def test_backup_crossing_the_reserve_fails_cleanly_and_recovers(
    small_stack: Stack, small_fs: Path, tmp_path: Path
) -> None:
    stack = small_stack
    src = tmp_path / "src"
    src.mkdir()
    for i in range(DATA_FILES):
        (src / f"f{i:03}.bin").write_bytes(os.urandom(FILE_BYTES))
    filler = small_fs / "filler"
    filler.write_bytes(os.urandom(FILLER_BYTES))
    stack.add_agent("alpha")
    ds = stack.add_files_source("alpha", [src])

    (pool,) = stack.cli("Get-StoragePool", "-Json", check=True).json()
    assert pool["reserve_bytes"] == RESERVE_BYTES
    assert pool["below_reserve"] is False, pool

    job = stack.backup(ds["id"])
    assert job["state"] == "failed", job
    assert f"storage pool {small_fs / 'pool'} has " in job["error"]
    assert REFUSED in job["error"], job["error"]
    assert stack.recovery_points(ds["id"]) == []
    # The server failed it (not the agent's later report), mid-run: the pool was above
    # its reserve when the backup started.
    failed = [e for e in stack.server.log_events() if e.get("event") == "backup_failed_no_space"]
    assert {e["job_id"] for e in failed} == {job["id"]}  # once per upload in flight
    (alert,) = _pool_alerts(stack)
    assert alert["subject"] == str(small_fs / "pool")
    assert alert["severity"] == "critical"
    (pool,) = stack.cli("Get-StoragePool", "-Json", check=True).json()
    assert pool["below_reserve"] is True, pool
    assert pool["fs_free_bytes"] < RESERVE_BYTES

    refused = stack.cli("Start-Backup", "-DataSource", ds["id"], "-Json")
    assert refused.code == 1, refused
    assert refused.out == ""
    assert "(507)" in refused.err and REFUSED in refused.err, refused.err
    jobs = stack.cli("Get-Job", "-Json", check=True).json()
    backups = [j["id"] for j in jobs if j["kind"] == "backup"]
    assert backups == [job["id"]], jobs  # the refusal created no job
    table = stack.cli("Get-Alert", check=True).out
    assert "Critical" in table and "pool_reserve" in table

    filler.unlink()
    job2 = stack.backup(ds["id"])
    assert job2["state"] == "succeeded", (job2, stack.server.tail())
    (rp,) = stack.recovery_points(ds["id"])
    assert rp["files"] == DATA_FILES
    assert _pool_alerts(stack) == []
    (resolved,) = _pool_alerts(stack, "-All")
    assert resolved["id"] == alert["id"]
    assert resolved["resolved_at"] is not None
    (pool,) = stack.cli("Get-StoragePool", "-Json", check=True).json()
    assert pool["below_reserve"] is False, pool
