"""Vault creation and registration through the real CLI and server, on a folder vault.

The servers use the production KDF parameters. The last tests register with a vault on a
real Azurite and a real moto server. A second server on its own data dir plays
the alternate server that recovers a lost one: it registers with the same vault.
"""

from __future__ import annotations

import asyncio
import json
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.vault_credentials import VaultCredentials
from storage_pool.vault.folder import FolderBackend
from storage_pool.vault.format import HEADER_NAME
from storage_pool.vault.header import VaultHeader
from tests.support.azurite import Azurite
from tests.support.moto import ACCESS_KEY, SECRET_KEY, Moto
from tests.support.stack import CliResult, Stack


@pytest.fixture
def two_stacks(tmp_path: Path) -> Iterator[tuple[Stack, Stack]]:
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    first = Stack.start(tmp_path / "first")
    try:
        second = Stack.start(tmp_path / "second")
        try:
            yield first, second
        finally:
            second.close()
    finally:
        first.close()


def refused(result: CliResult, code: int, *fragments: str) -> None:
    assert result.code == code, (result.code, result.out, result.err)
    assert result.out == ""
    assert result.err.count("\n") == 1, result.err
    for fragment in fragments:
        assert fragment in result.err, (fragment, result.err)


def new_vault(stack: Stack, vault: Path, out: Path) -> dict[str, object]:
    stack.cli(
        "New-Vault", "-Backend", "folder", "-Path", str(vault), "-OutFile", str(out), check=True
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    doc: dict[str, object] = json.loads(out.read_text())
    return doc


def header(vault: Path) -> VaultHeader:
    return VaultHeader.from_json(asyncio.run(FolderBackend(vault).get(HEADER_NAME)))


def refusals_register_nothing(
    first: Stack, vault: Path, cred: Path, doc: dict[str, object], tmp_path: Path
) -> None:
    """A short passphrase, an edited file and an expired one: exit 2, nothing registered."""
    refused(
        first.cli("Register-Vault", "-CredentialsFile", str(cred), "-Passphrase", "too short"),
        2,
        "at least 16",
    )
    edited = tmp_path / "edited.cred"
    edited.write_text(json.dumps({**doc, "expires_at": time.time() + 10 * 86400}))
    refused(
        first.cli("Register-Vault", "-CredentialsFile", str(edited), "-Passphrase", "x" * 20),
        2,
        "checksum",
    )
    old = VaultCredentials.issue(
        {"kind": "folder", "path": str(vault)}, None, time.time() - 49 * 3600
    )
    expired = tmp_path / "expired.cred"
    expired.write_text(json.dumps(old.to_doc()))
    refused(
        first.cli("Register-Vault", "-CredentialsFile", str(expired), "-Passphrase", "x" * 20),
        2,
        "vault credentials file expired at",
        "New-Vault",
    )
    status = first.cli("Get-Vault", "-Json", check=True).json()
    assert status["registered"] is False
    assert not (vault / HEADER_NAME).exists()


def alternate_server_registers(
    second: Stack,
    vault: Path,
    tmp_path: Path,
    vault_id: str,
    *,
    passphrase: str,
    new_passphrase: str,
) -> None:
    """A second server on its own data dir: the old passphrase is refused, the new one
    unlocks the same vault without making keys."""
    cred2 = tmp_path / "vault2.cred"
    doc2 = new_vault(second, vault, cred2)
    assert doc2["vault_id"] == vault_id
    refused(
        second.cli("Register-Vault", "-CredentialsFile", str(cred2), "-Passphrase", passphrase),
        2,
        "wrong passphrase",
    )
    assert second.cli("Get-Vault", "-Json", check=True).json()["registered"] is False
    ok = second.cli(
        "Register-Vault", "-CredentialsFile", str(cred2), "-Passphrase", new_passphrase, "-Json"
    )
    assert ok.code == 0, ok
    answer = ok.json()
    assert answer["vault_id"] == vault_id and answer["created_keys"] is False
    assert answer["generated_passphrase"] is None


def test_new_register_change_and_alternate_server(
    two_stacks: tuple[Stack, Stack], tmp_path: Path
) -> None:
    first, second = two_stacks
    vault = tmp_path / "vault"
    cred = tmp_path / "vault.cred"
    doc = new_vault(first, vault, cred)
    assert doc["vault_id"] is None
    assert vault.is_dir()

    refusals_register_nothing(first, vault, cred, doc, tmp_path)

    # First registration with a generated passphrase, printed once.
    result = first.cli("Register-Vault", "-CredentialsFile", str(cred), "-GeneratePassphrase")
    assert result.code == 0, result
    (line,) = [ln for ln in result.out.splitlines() if ln.startswith("Passphrase: ")]
    passphrase = line.removeprefix("Passphrase: ")
    assert len(passphrase) >= 16
    assert "offline" in result.out and "only this once" in result.out
    assert "created" in result.out
    vault_id = header(vault).vault_id_hex

    got = first.cli("Get-Vault", "-Json", check=True)
    status = got.json()
    assert status["vault_id"] == vault_id and status["state"] == "active"
    assert status["location"] == {"kind": "folder", "path": str(vault)}
    assert passphrase not in got.out
    human = first.cli("Get-Vault", check=True).out
    assert vault_id in human and "active" in human
    reg_file = first.server.data_dir / "vault" / "registration.json"
    assert stat.S_IMODE(reg_file.stat().st_mode) == 0o600

    # One server, one vault.
    other_cred = tmp_path / "other.cred"
    new_vault(first, tmp_path / "other-vault", other_cred)
    refused(
        first.cli("Register-Vault", "-CredentialsFile", str(other_cred), "-Passphrase", "y" * 20),
        1,
        "one server, one vault",
    )

    # Set-VaultPassphrase needs a PIN; then the old passphrase no longer opens the vault.
    new_passphrase = "a new passphrase of the operator"
    refused(first.cli("Set-VaultPassphrase", "-Passphrase", new_passphrase), 2, "PIN")
    pin = first.cli("New-SecurityPin", "-Json", check=True).json()["pin"]
    changed = first.cli(
        "Set-VaultPassphrase", "-Passphrase", new_passphrase, "-SecurityPin", pin, "-Json"
    )
    assert changed.code == 0, changed
    assert changed.json() == {"vault_id": vault_id, "header_generation": 2}
    assert header(vault).generation == 2
    assert first.cli("Get-Vault", "-Json", check=True).json()["state"] == "active"

    alternate_server_registers(
        second, vault, tmp_path, vault_id, passphrase=passphrase, new_passphrase=new_passphrase
    )

    # No passphrase in any server log line.
    for stack in (first, second):
        text = stack.server.log_path.read_text(errors="replace")
        assert passphrase not in text and new_passphrase not in text
        assert "y" * 20 not in text


@pytest.mark.parametrize("kind", ["azure", "s3"])
def test_cloud_vault_registration(
    kind: str, request: pytest.FixtureRequest, stack: Stack, tmp_path: Path
) -> None:
    container = f"v{uuid.uuid4().hex[:20]}"
    if kind == "azure":
        azurite: Azurite = request.getfixturevalue("azurite")
        secret = azurite.connection_string()
        location = ["-ConnectionString", secret, "-Container", container]
    else:
        moto: Moto = request.getfixturevalue("moto")
        secret = SECRET_KEY
        location = [
            "-Endpoint", moto.endpoint_url, "-Bucket", container, "-Prefix", "stockade",
            "-AccessKey", ACCESS_KEY, "-SecretKey", SECRET_KEY,
        ]  # fmt: skip
    cred = tmp_path / "cloud.cred"
    stack.cli("New-Vault", "-Backend", kind, *location, "-OutFile", str(cred), check=True)
    assert stat.S_IMODE(cred.stat().st_mode) == 0o600
    passphrase = f"{kind} vault passphrase for the test"
    ok = stack.cli("Register-Vault", "-CredentialsFile", str(cred), "-Passphrase", passphrase)
    assert ok.code == 0, (ok, stack.server.tail())
    got = stack.cli("Get-Vault", "-Json", check=True)
    status = got.json()
    assert status["state"] == "active" and status["location"]["kind"] == kind
    assert secret not in got.out and passphrase not in got.out
    assert secret not in stack.server.log_path.read_text(errors="replace")
