"""Faults during online backup through the real server: kill -9 and a cloud outage.

kill -9 mid-upload: a server with small packs copies random data to a folder vault. Each
iteration starts an online job and SIGKILLs the server once the vault gained a random
1-3 new pack objects since the iteration began (the job is then mid-upload by
construction), restarts the server (its orphaned Mosquitto is its own business) and goes
on; the last iteration runs to completion. Every upload that completed is a file in the
folder vault (pack names are random and never reused; nothing purges during the test),
so the vault's pack bytes are the sum of everything uploaded over all iterations. They
may exceed the data by the packing overhead plus, per kill, the packs whose put was in
flight (at most `online.parallelism` of them): a pack put but not yet recorded is
adopted from its scratch file, never uploaded again (storage_pool/vault/uploader.py).
Then Start-Restore -FromCloud on the same server gives back the tree byte-identical.

Cloud outage: an Azurite vault with on-disk persistence (``--location``), so stopping and
starting it on the same port keeps its data. A short outage inside the retry budget: the
job keeps running while Azurite is down and succeeds once it is back. An outage longer
than the budget (``online.retry_budget_seconds``, set to a few seconds here) fails the job
as retryable with a reason naming the vault storage; after Azurite returns a new job
succeeds without uploading again what the vault holds.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.e2e.test_online_e2e import (
    MIB,
    PASSPHRASE,
    TERMINAL,
    api_job,
    assert_no_marker,
    backed_up_source,
    register_folder_vault,
    start_online,
    start_stack,
    wait_job,
    write_random_tree,
)
from tests.support.azurite import Azurite, PersistentAzurite
from tests.support.stack import Stack
from tests.support.tree_compare import assert_same_tree

PACK_MIB = 4
PARALLELISM = 2
SETTINGS = (
    f"online.pack_mib={PACK_MIB}",
    f"online.parallelism={PARALLELISM}",
    f"scratch.max_bytes={32 * MIB}",
)
# Sealing, framing and pack trailers: well under 1% plus a little per pack.
OVERHEAD = 0.01


def vault_packs(vault: Path) -> dict[str, int]:
    """Completed objects of at least 1 MiB under the vault's data prefix (packs: segments,
    manifests and catalogs are far smaller), by path; temp files of puts are skipped."""
    found: dict[str, int] = {}
    for dirpath, _dirs, files in os.walk(vault / "data"):
        for name in files:
            if name.startswith("."):
                continue
            try:
                size = os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue
            if size >= MIB:
                found[os.path.join(dirpath, name)] = size
    return found


def kill_mid_upload(stack: Stack, job_id: str, vault: Path, rng: random.Random) -> bool:
    """SIGKILL the server once the vault gained 1-3 new packs; False if the job ended
    first."""
    before = len(vault_packs(vault))
    want = before + rng.randint(1, 3)
    polls = 0
    while True:
        if len(vault_packs(vault)) >= want:
            stack.server.kill9()
            return True
        polls += 1
        if polls % 25 == 0 and api_job(stack, job_id)["state"] in TERMINAL:
            return False
        time.sleep(0.005)


def _kill_iterations(tmp_path: Path, size: int, kills: int) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4)))
    stack = start_stack(tmp_path / "srv", *SETTINGS)
    try:
        src = tmp_path / "src"
        total = write_random_tree(src, size, file_size=8 * MIB)
        ds = backed_up_source(stack, src)
        (disk_rp,) = stack.recovery_points(ds["id"])
        vault = tmp_path / "vault"
        register_folder_vault(stack, vault, tmp_path / "v.cred")

        killed = 0
        while killed < kills:
            job = start_online(stack, ds["id"])
            if not kill_mid_upload(stack, job["id"], vault, rng):
                break  # the job finished before the next kill: nothing left to interrupt
            killed += 1
            stack.server.start()
            after = api_job(stack, job["id"])
            assert after["state"] == "failed", (after, stack.server.tail())
        assert killed >= min(kills, 3), f"only {killed} kills landed mid-upload"

        job = start_online(stack, ds["id"])
        done = wait_job(stack, job["id"])
        assert done["state"] == "succeeded", (done, stack.server.tail())
        assert files_in(stack.server.data_dir / "scratch") == 0

        uploaded = sum(vault_packs(vault).values())
        slack = killed * PARALLELISM * (PACK_MIB * MIB + MIB)
        limit = total * (1 + OVERHEAD) + slack
        assert uploaded <= limit, (uploaded, total, killed, slack)
        assert done["result"]["bytes_uploaded"] <= limit, done["result"]
        assert_no_marker(vault)

        stack.wait_agent_online("alpha")
        target = tmp_path / "restore"
        res = stack.cli(
            "Start-Restore", "-FromCloud", "-RecoveryPoint", disk_rp["id"],
            "-TargetAgent", "alpha", "-TargetPath", str(target), "-Wait", "-Json",
            timeout=900,
        )  # fmt: skip
        assert res.code == 0, (res.out, res.err, stack.server.tail())
        assert_same_tree(src, target / str(src).lstrip("/"))
    finally:
        stack.close()


def files_in(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def test_kill9_mid_upload_then_resume(tmp_path: Path) -> None:
    _kill_iterations(tmp_path, 96 * MIB, kills=3)


@pytest.mark.slow
def test_kill9_mid_upload_ten_times_then_resume(tmp_path: Path) -> None:
    _kill_iterations(tmp_path, 512 * MIB, kills=10)


# -- Azurite outage ------------------------------------------------------------------------

# The long outage's retry budget: long enough to see retries, short enough for the default
# suite (the outage itself never ends while the job runs, so no timing is asserted).
OUTAGE_BUDGET = 3


@pytest.fixture
def azurite(tmp_path: Path) -> Iterator[PersistentAzurite]:
    service = PersistentAzurite(tmp_path / "azurite")
    asyncio.run(service.start())
    try:
        yield service
    finally:
        asyncio.run(service.stop())
        service.close_log()


def _azure_stack(tmp_path: Path, azurite: Azurite, *settings: str) -> Stack:
    stack = start_stack(tmp_path / "srv", *SETTINGS, *settings)
    cred = tmp_path / "az.cred"
    stack.cli(
        "New-Vault", "-Backend", "azure", "-ConnectionString", azurite.connection_string(),
        "-Container", f"v{uuid.uuid4().hex[:20]}", "-OutFile", str(cred), check=True,
    )  # fmt: skip
    stack.cli(
        "Register-Vault", "-CredentialsFile", str(cred), "-Passphrase", PASSPHRASE, check=True
    )
    return stack


def wait_uploading(stack: Stack, job_id: str) -> dict[str, Any]:
    """Until the job's progress shows uploaded bytes; the job then."""
    while True:
        job = api_job(stack, job_id)
        assert job["state"] not in TERMINAL, (job, "ended before the outage")
        if (job.get("progress") or {}).get("bytes_uploaded", 0) > 0:
            return job
        time.sleep(0.05)


def test_short_azurite_outage_is_retried(tmp_path: Path, azurite: PersistentAzurite) -> None:
    stack = _azure_stack(tmp_path, azurite)
    try:
        src = tmp_path / "src"
        total = write_random_tree(src, 160 * MIB, file_size=8 * MIB)
        ds = backed_up_source(stack, src)
        job = start_online(stack, ds["id"])
        wait_uploading(stack, job["id"])
        asyncio.run(azurite.stop())
        # Well inside the 300 s retry budget: the job waits, it does not fail.
        time.sleep(5)
        assert api_job(stack, job["id"])["state"] == "running", stack.server.tail()
        asyncio.run(azurite.start())
        done = wait_job(stack, job["id"])
        assert done["state"] == "succeeded", (done, stack.server.tail())
        slack = PARALLELISM * (PACK_MIB * MIB + MIB)
        assert done["result"]["bytes_uploaded"] <= total * (1 + OVERHEAD) + slack, done
        again = wait_job(stack, start_online(stack, ds["id"])["id"])
        assert again["state"] == "succeeded", again
        assert again["result"]["bytes_uploaded"] == 0, again["result"]
        assert again["result"]["chunks_uploaded"] == 0, again["result"]
    finally:
        stack.close()


def test_long_azurite_outage_fails_cleanly_then_resumes(
    tmp_path: Path, azurite: PersistentAzurite
) -> None:
    stack = _azure_stack(tmp_path, azurite, f"online.retry_budget_seconds={OUTAGE_BUDGET}")
    try:
        src = tmp_path / "src"
        total = write_random_tree(src, 160 * MIB, file_size=8 * MIB)
        ds = backed_up_source(stack, src)
        job = start_online(stack, ds["id"])
        before = wait_uploading(stack, job["id"])["progress"]["bytes_uploaded"]
        asyncio.run(azurite.stop())
        failed = wait_job(stack, job["id"], timeout=300)
        assert failed["state"] == "failed", failed
        assert failed["retryable"] is True, failed
        assert "the vault storage failed" in failed["error"], failed["error"]
        assert f"127.0.0.1:{azurite.port}" in failed["error"] or "onnect" in failed["error"], (
            failed["error"]
        )
        assert files_in(stack.server.data_dir / "scratch") == 0
        # The first refused connection is always retried (its delay is inside the budget),
        # and each retry is logged with the job, the call, its kind and the budget.
        retries = [
            e
            for e in stack.server.log_events()
            if e.get("event") == "vault_retry" and e.get("job_id") == job["id"]
        ]
        assert retries, stack.server.tail()
        assert all(e["budget"] == OUTAGE_BUDGET for e in retries), retries

        asyncio.run(azurite.start())
        done = wait_job(stack, start_online(stack, ds["id"])["id"])
        assert done["state"] == "succeeded", (done, stack.server.tail())
        # What the failed job got into the vault is not uploaded again.
        slack = PARALLELISM * (PACK_MIB * MIB + MIB)
        assert done["result"]["bytes_uploaded"] <= total * (1 + OVERHEAD) - before + slack, (
            done["result"],
            before,
        )
        assert done["result"]["chunks_uploaded"] < done["result"]["chunks_total"], done
    finally:
        stack.close()
