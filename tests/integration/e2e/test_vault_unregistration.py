"""Unregister-Vault through the real CLI and server, with a real agent and a folder vault.

One story: back up, copy online, then Unregister-Vault is refused without a security PIN
and while a restore from the cloud is running (409 naming the job; the PIN is not used up),
then accepted. Afterwards the registration file is gone, the vault's files are exactly as
they were, Get-CloudConnection says False at once (not_registered), cloud operations are
refused with "no vault", and the online RP stays listed, marked as in an unregistered
vault. Registering the same vault again (same passphrase) makes it connected again, with
the same online RP, and online backups work.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from server.vault_state import registration_path
from tests.integration.e2e.test_cloud_connection import fields
from tests.integration.e2e.test_online_e2e import PASSPHRASE, TERMINAL, backed_up_source, wait_job
from tests.support.stack import CliResult, Stack


def vault_files(vault: Path) -> dict[str, str]:
    return {
        str(p.relative_to(vault)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(vault.rglob("*"))
        if p.is_file()
    }


def new_credentials(stack: Stack, vault: Path, cred: Path) -> None:
    stack.cli(
        "New-Vault", "-Backend", "folder", "-Path", str(vault), "-OutFile", str(cred), check=True
    )


def register(stack: Stack, cred: Path) -> None:
    stack.cli(
        "Register-Vault", "-CredentialsFile", str(cred), "-Passphrase", PASSPHRASE, check=True
    )


def pin(stack: Stack) -> str:
    doc: Any = stack.cli("New-SecurityPin", "-Json", check=True).json()
    value: str = (doc[0] if isinstance(doc, list) else doc)["pin"]
    return value


def refused(result: CliResult, code: int, *fragments: str) -> None:
    assert result.code == code, (result.code, result.out, result.err)
    assert result.out == ""
    for fragment in fragments:
        assert fragment in result.err, (fragment, result.err)


def cloud_points(stack: Stack, ds_id: str) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = stack.cli(
        "Get-RecoveryPoint", "-DataSource", ds_id, "-Tier", "Cloud", "-Json", check=True
    ).json()
    return got


def test_unregister_then_register_again(stack: Stack, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"unregister me, not my data\n" * 1000)
    ds = backed_up_source(stack, src)
    vault = tmp_path / "vault"
    new_credentials(stack, vault, tmp_path / "v.cred")
    register(stack, tmp_path / "v.cred")
    online = stack.cli("Start-Backup", "-DataSource", ds["id"], "-Online", "-Wait", "-Json")
    assert online.code == 0, (online.out, online.err, stack.server.tail())
    (orp,) = cloud_points(stack, ds["id"])
    assert orp["vault_registered"] is True and orp["vault_id"]

    refused(stack.cli("Unregister-Vault"), 2, "security PIN is missing")

    # A restore from the cloud to an agent that is offline stays running on the server.
    stack.agents["alpha"].stop()
    stack.wait_agent_online("alpha", online=False)
    started = stack.cli(
        "Start-Restore",
        "-FromCloud",
        "-RecoveryPoint",
        orp["disk_rp_id"],
        "-TargetPath",
        str(tmp_path / "restore"),
        "-Json",
    )
    assert started.code == 0, (started.out, started.err, stack.server.tail())
    restore: Any = started.json()
    restore = restore[0] if isinstance(restore, list) else restore
    the_pin = pin(stack)
    busy = stack.cli("Unregister-Vault", "-SecurityPin", the_pin)
    refused(busy, 1, "restore from cloud job", restore["id"], "Stop-Job")
    stack.cli("Stop-Job", "-Id", restore["id"], check=True)
    assert wait_job(stack, restore["id"])["state"] in TERMINAL

    before = vault_files(vault)
    unregistered(stack, the_pin, orp, tmp_path)
    assert vault_files(vault) == before

    # The same vault again, with fresh credentials: connected, the same online RP, and
    # online backups run.
    new_credentials(stack, vault, tmp_path / "v2.cred")
    register(stack, tmp_path / "v2.cred")
    probed = stack.cli("Get-CloudConnection", "-Probe")
    assert (probed.code, probed.out) == (0, "True\n"), (probed.err, stack.server.tail())
    (again,) = cloud_points(stack, ds["id"])
    assert again["id"] == orp["id"] and again["vault_registered"] is True
    stack.agents["alpha"].start()
    stack.wait_agent_online("alpha")
    assert stack.backup(ds["id"])["state"] == "succeeded"
    online = stack.cli("Start-Backup", "-DataSource", ds["id"], "-Online", "-Wait")
    assert online.code == 0, (online.out, online.err, stack.server.tail())
    assert len(cloud_points(stack, ds["id"])) == 2


def unregistered(stack: Stack, the_pin: str, orp: dict[str, Any], tmp_path: Path) -> None:
    """Unregister-Vault with a PIN a refusal did not use up; then everything says so."""
    ds_id = orp["data_source_id"]
    done = stack.cli("Unregister-Vault", "-SecurityPin", the_pin, "-Json")
    assert done.code == 0, (done.out, done.err, stack.server.tail())
    answer: Any = done.json()
    answer = answer[0] if isinstance(answer, list) else answer
    assert answer["vault_id"] == orp["vault_id"]
    assert answer["vault_data"] == "kept" and answer["online_recovery_points"] == 1
    assert not registration_path(stack.server.data_dir).exists()
    refused(stack.cli("Unregister-Vault", "-SecurityPin", pin(stack)), 1, "not registered")

    plain = stack.cli("Get-CloudConnection")
    assert (plain.code, plain.out) == (1, "False\n"), plain.err
    detailed = fields(stack.cli("Get-CloudConnection", "-Detailed"))
    assert detailed["Connectivity"] == "not_registered"
    assert stack.cli("Get-Vault", "-Json", check=True).json()["registered"] is False
    refused(
        stack.cli("Start-Backup", "-DataSource", ds_id, "-Online"),
        1,
        "no vault",
    )
    refused(
        stack.cli(
            "Start-Restore",
            "-FromCloud",
            "-RecoveryPoint",
            orp["id"],
            "-TargetPath",
            str(tmp_path / "restore2"),
        ),
        1,
        "not registered with a vault",
    )
    (kept,) = cloud_points(stack, ds_id)
    assert kept["id"] == orp["id"]
    assert kept["vault_registered"] is False and kept["vault_id"] == orp["vault_id"]
    table = stack.cli("Get-RecoveryPoint", "-DataSource", ds_id, "-Tier", "Cloud", check=True)
    assert "Cloud (unregistered)" in table.out, table.out
