"""Alternate-server recovery end to end: real servers, agents, CLI and a folder vault.

Server A backs up a tree and registers with a vault. The online copy is made with the
engine (`copy_recovery_point`) on A's pool after A stopped, with the keys of A's
registration: the vault then holds what an online backup job would have written. A's data
dir (pool, catalog, registration) is wiped. A fresh server B on a new data dir runs
New-Vault on the same folder and Register-Vault: a wrong passphrase is refused with
nothing listed; the right one lists the online RP. A new agent on B restores it with
Start-Restore -FromCloud: the tree comes back byte-identical.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from server.vault_registry import VaultRegistry
from server.vault_sync import registered_vault
from storage_pool import StoragePool
from storage_pool.vault.scratch import ScratchBudget
from storage_pool.vault.uploader import copy_recovery_point
from tests.support.stack import Stack
from tests.support.tree_compare import Compare, assert_same_tree
from tests.unit.agent.sample_tree import build_rich_tree

PASSPHRASE = "an offline passphrase for the e2e vault"


def restored(target: Path, source: Path) -> Path:
    return target / str(source).lstrip("/")


async def _copy_online(data_dir: Path, rp_id: str, scratch: Path) -> str:
    """What the online-backup job does, with the engine: A's pool RP into A's vault."""
    registry = VaultRegistry(data_dir, clock=time.time)
    pool = await StoragePool.open(data_dir / "pool")
    try:
        rp = await pool.get_recovery_point(rp_id)
        async with registered_vault(registry) as vault:
            result = await copy_recovery_point(
                pool, rp, vault, scratch, ScratchBudget(64 * 1024 * 1024), agent="alpha"
            )
    finally:
        await pool.close()
    return result.manifest_name


def test_fresh_server_restores_from_the_vault(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    xattrs = build_rich_tree(src)
    vault = tmp_path / "vault"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()

    a = Stack.start(tmp_path / "a")
    try:
        a.add_agent("alpha")
        ds = a.add_files_source("alpha", [src])
        assert a.backup(ds["id"])["state"] == "succeeded"
        (rp,) = a.recovery_points(ds["id"])
        cred_a = tmp_path / "a.cred"
        a.cli(
            "New-Vault",
            "-Backend",
            "folder",
            "-Path",
            str(vault),
            "-OutFile",
            str(cred_a),
            check=True,
        )
        a.cli(
            "Register-Vault", "-CredentialsFile", str(cred_a), "-Passphrase", PASSPHRASE, check=True
        )
    finally:
        a.close()
    data_a = a.server.data_dir
    manifest = asyncio.run(_copy_online(data_a, rp["id"], tmp_path / "scratch"))
    shutil.rmtree(tmp_path / "a")  # the backup host is lost: pool, catalog, registration

    b = Stack.start(tmp_path / "b")
    try:
        cred_b = tmp_path / "b.cred"
        b.cli(
            "New-Vault",
            "-Backend",
            "folder",
            "-Path",
            str(vault),
            "-OutFile",
            str(cred_b),
            check=True,
        )
        wrong = b.cli(
            "Register-Vault",
            "-CredentialsFile",
            str(cred_b),
            "-Passphrase",
            "not the passphrase of this vault",
        )
        assert wrong.code == 2 and "wrong passphrase" in wrong.err, (wrong.out, wrong.err)
        status, listed = b.server.api("GET", "/api/v1/recovery-points?tier=cloud")
        assert status == 200 and listed == []

        ok = b.cli(
            "Register-Vault",
            "-CredentialsFile",
            str(cred_b),
            "-Passphrase",
            PASSPHRASE,
            "-Json",
            check=True,
        )
        assert ok.json()["sync"]["listed"] == 1, ok.out
        status, listed = b.server.api("GET", "/api/v1/recovery-points?tier=cloud")
        assert status == 200, listed
        assert [(o["id"], o["disk_rp_id"]) for o in listed] == [(manifest, rp["id"])]
        assert listed[0]["data_source_id"] == ds["id"]

        b.add_agent("beta")
        target = tmp_path / "restore"
        res = b.cli(
            "Start-Restore",
            "-FromCloud",
            "-RecoveryPoint",
            rp["id"],
            "-TargetAgent",
            "beta",
            "-TargetPath",
            str(target),
            "-Wait",
            "-Json",
        )
        assert res.code == 0, (res.out, res.err, b.server.tail())
        assert_same_tree(src, restored(target, src), Compare(xattrs=xattrs))
        # The re-seeded RP is now an ordinary disk RP of B.
        assert [r["id"] for r in b.recovery_points(ds["id"])] == [rp["id"]]
    finally:
        b.close()
