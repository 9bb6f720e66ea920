"""New-Vault, Register-Vault, Set-VaultPassphrase and Get-Vault on a real folder vault.

Registries use the test-only KDF parameters, passed explicitly; everything else is real:
the folder backend, the registration file, the catalog's security PINs.
"""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from server.catalog import Catalog
from server.catalog_errors import SecurityPinError
from server.protection import require_pin
from server.vault_credentials import CredentialsError, CredentialsExpiredError
from server.vault_registry import (
    INIT_MARKER_NAME,
    GeneratePassphraseError,
    NotRegisteredError,
    NoVaultAtLocationError,
    OneVaultError,
    VaultRegistry,
)
from server.vault_state import load_registration, registration_path, save_registration
from storage_pool.vault.backend import TransientError, VaultBackend
from storage_pool.vault.folder import FolderBackend
from storage_pool.vault.format import HEADER_NAME
from storage_pool.vault.format_errors import PassphraseTooShortError, WrongPassphraseError
from storage_pool.vault.header import VaultHeader, unlock
from storage_pool.vault.keys import KDF_TESTING
from tests.unit.server.catalog_fixture import FakeClock
from tests.unit.server.vault_fixture import (
    OTHER_PASSPHRASE,
    PASSPHRASE,
    FailingHeaderPut,
    RacingFolder,
    folder_spec,
    registry,
)


async def header_of(root: Path) -> VaultHeader:
    return VaultHeader.from_json(await FolderBackend(root).get(HEADER_NAME))


async def test_new_vault_creates_the_folder_and_marker_but_no_keys(
    tmp_path: Path, clock: FakeClock
) -> None:
    root = tmp_path / "vault"
    reg = registry(tmp_path / "server", clock)
    creds = await reg.new_vault(folder_spec(root))
    assert root.is_dir()
    backend = FolderBackend(root)
    assert await backend.head(INIT_MARKER_NAME) is not None
    assert await backend.head(HEADER_NAME) is None
    assert creds.vault_id is None
    assert creds.expires_at == clock.now + 48 * 3600
    assert await reg.registration() is None


async def test_first_registration_creates_keys_and_a_later_one_unlocks(
    tmp_path: Path, clock: FakeClock
) -> None:
    root = tmp_path / "vault"
    first = registry(tmp_path / "one", clock)
    creds = (await first.new_vault(folder_spec(root))).to_doc()
    outcome = await first.register(creds, PASSPHRASE)
    assert outcome.created_keys and outcome.generated_passphrase is None
    header = await header_of(root)
    assert outcome.registration.vault_id == header.vault_id_hex
    unlock(header, PASSPHRASE, min_params=KDF_TESTING)  # the header is the one it says

    path = registration_path(tmp_path / "one")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    # An alternate server: New-Vault on the same place names the existing vault.
    second = registry(tmp_path / "two", clock)
    creds2 = (await second.new_vault(folder_spec(root))).to_doc()
    assert creds2["vault_id"] == header.vault_id_hex
    again = await second.register(creds2, PASSPHRASE)
    assert not again.created_keys
    assert again.registration.vault_id == header.vault_id_hex
    assert (await header_of(root)).to_json() == header.to_json()  # untouched


async def test_expired_credentials_are_refused_and_nothing_registered(
    tmp_path: Path, clock: FakeClock
) -> None:
    reg = registry(tmp_path / "server", clock)
    creds = (await reg.new_vault(folder_spec(tmp_path / "vault"))).to_doc()
    clock.now += 48 * 3600
    with pytest.raises(
        CredentialsExpiredError, match=r"expired at .*create a new one with New-Vault"
    ):
        await reg.register(creds, PASSPHRASE)
    assert await reg.registration() is None
    assert await FolderBackend(tmp_path / "vault").head(HEADER_NAME) is None


async def test_tampered_credentials_are_refused(tmp_path: Path, clock: FakeClock) -> None:
    reg = registry(tmp_path / "server", clock)
    creds = (await reg.new_vault(folder_spec(tmp_path / "vault"))).to_doc()
    creds["expires_at"] += 3600 * 24 * 365
    with pytest.raises(CredentialsError, match="checksum"):
        await reg.register(creds, PASSPHRASE)
    assert await reg.registration() is None


async def test_short_passphrase_is_refused_before_any_key_is_made(
    tmp_path: Path, clock: FakeClock
) -> None:
    reg = registry(tmp_path / "server", clock)
    creds = (await reg.new_vault(folder_spec(tmp_path / "vault"))).to_doc()
    with pytest.raises(PassphraseTooShortError, match="15 characters; at least 16"):
        await reg.register(creds, "x" * 15)
    assert await reg.registration() is None
    assert await FolderBackend(tmp_path / "vault").head(HEADER_NAME) is None


async def test_wrong_passphrase_registers_nothing(tmp_path: Path, clock: FakeClock) -> None:
    root = tmp_path / "vault"
    first = registry(tmp_path / "one", clock)
    creds = (await first.new_vault(folder_spec(root))).to_doc()
    await first.register(creds, PASSPHRASE)
    second = registry(tmp_path / "two", clock)
    with pytest.raises(WrongPassphraseError, match="wrong passphrase"):
        await second.register(creds, OTHER_PASSPHRASE)
    assert await second.registration() is None
    with pytest.raises(GeneratePassphraseError, match="already has a passphrase"):
        await second.register(creds, None, generate=True)
    assert await second.registration() is None


async def test_generated_passphrase_is_returned_once_and_opens_the_vault(
    tmp_path: Path, clock: FakeClock
) -> None:
    root = tmp_path / "vault"
    reg = registry(tmp_path / "server", clock)
    creds = (await reg.new_vault(folder_spec(root))).to_doc()
    outcome = await reg.register(creds, None, generate=True)
    generated = outcome.generated_passphrase
    assert generated is not None and len(generated) >= 16
    unlock(await header_of(root), generated, min_params=KDF_TESTING)
    status = await reg.status()
    assert generated not in json.dumps(status)
    assert status["state"] == "active" and status["registered"] is True


async def test_registration_needs_a_place_new_vault_prepared(
    tmp_path: Path, clock: FakeClock
) -> None:
    reg = registry(tmp_path / "server", clock)
    creds = (await reg.new_vault(folder_spec(tmp_path / "vault"))).to_doc()
    await FolderBackend(tmp_path / "vault").delete(INIT_MARKER_NAME)
    with pytest.raises(NoVaultAtLocationError, match="holds no Stockade vault"):
        await reg.register(creds, PASSPHRASE)
    assert await reg.registration() is None


async def test_one_server_one_vault(tmp_path: Path, clock: FakeClock) -> None:
    reg = registry(tmp_path / "server", clock)
    creds_a = (await reg.new_vault(folder_spec(tmp_path / "a"))).to_doc()
    creds_b = (await reg.new_vault(folder_spec(tmp_path / "b"))).to_doc()
    first = await reg.register(creds_a, PASSPHRASE)
    with pytest.raises(OneVaultError, match="one server, one vault"):
        await reg.register(creds_b, PASSPHRASE)
    assert await FolderBackend(tmp_path / "b").head(HEADER_NAME) is None  # no keys made
    # Once b is keyed elsewhere, its credentials name it and are refused up front.
    other = registry(tmp_path / "other", clock)
    await other.register(creds_b, PASSPHRASE)
    creds_b2 = (await reg.new_vault(folder_spec(tmp_path / "b"))).to_doc()
    with pytest.raises(OneVaultError, match=first.registration.vault_id):
        await reg.register(creds_b2, PASSPHRASE)
    current = await reg.registration()
    assert current is not None and current.vault_id == first.registration.vault_id
    # Registering again with the same vault is allowed (fresh credentials, same keys).
    creds_a2 = (await reg.new_vault(folder_spec(tmp_path / "a"))).to_doc()
    again = await reg.register(creds_a2, PASSPHRASE)
    assert again.registration.vault_id == first.registration.vault_id and not again.created_keys


@pytest.mark.parametrize("same_passphrase", [True, False])
async def test_racing_first_registrations_make_keys_once(
    tmp_path: Path, clock: FakeClock, same_passphrase: bool
) -> None:
    root = tmp_path / "vault"
    creds = (await registry(tmp_path / "maker", clock).new_vault(folder_spec(root))).to_doc()
    barrier = asyncio.Barrier(2)

    def racing(spec: Mapping[str, Any]) -> VaultBackend:
        return RacingFolder(Path(spec["path"]), barrier)

    one = registry(tmp_path / "one", clock, racing)
    two = registry(tmp_path / "two", clock, racing)
    results = await asyncio.gather(
        one.register(creds, PASSPHRASE),
        two.register(creds, PASSPHRASE if same_passphrase else OTHER_PASSPHRASE),
        return_exceptions=True,
    )
    header = await header_of(root)
    if same_passphrase:
        assert not any(isinstance(r, BaseException) for r in results), results
        created = [r.created_keys for r in results if not isinstance(r, BaseException)]
        assert sorted(created) == [False, True]
        ids = {r.registration.vault_id for r in results if not isinstance(r, BaseException)}
        assert ids == {header.vault_id_hex}
    else:
        winners = [r for r in results if not isinstance(r, BaseException)]
        losers = [r for r in results if isinstance(r, BaseException)]
        assert len(winners) == 1 and winners[0].created_keys
        assert len(losers) == 1 and isinstance(losers[0], WrongPassphraseError)
        loser_dir = tmp_path / ("two" if results[1] is losers[0] else "one")
        assert load_registration(loser_dir) is None
        assert winners[0].registration.vault_id == header.vault_id_hex


async def test_set_vault_passphrase_rewraps_with_a_pin(
    tmp_path: Path, clock: FakeClock, catalog: Catalog
) -> None:
    root = tmp_path / "vault"
    reg = registry(tmp_path / "server", clock)
    creds = (await reg.new_vault(folder_spec(root))).to_doc()
    await reg.register(creds, PASSPHRASE)
    before = await header_of(root)

    async def no_pin() -> None:
        await require_pin(catalog, None, "set-vault-passphrase", "test")

    with pytest.raises(SecurityPinError, match="missing"):
        await reg.change_passphrase(OTHER_PASSPHRASE, no_pin)
    assert (await header_of(root)).to_json() == before.to_json()
    with pytest.raises(PassphraseTooShortError):
        await reg.change_passphrase("short", no_pin)

    pin, _ = await catalog.new_security_pin()

    async def use_pin() -> None:
        await require_pin(catalog, pin, "set-vault-passphrase", "test")

    new_header = await reg.change_passphrase(OTHER_PASSPHRASE, use_pin)
    after = await header_of(root)
    assert after.generation == before.generation + 1 == new_header.generation
    old_keys = unlock(before, PASSPHRASE, min_params=KDF_TESTING)
    assert unlock(after, OTHER_PASSPHRASE, min_params=KDF_TESTING).master == old_keys.master
    with pytest.raises(WrongPassphraseError):
        unlock(after, PASSPHRASE, min_params=KDF_TESTING)
    stored = load_registration(tmp_path / "server")
    assert stored is not None
    assert stored.passphrase == OTHER_PASSPHRASE and stored.pending_passphrase is None
    assert stored.header_generation == after.generation
    # Back to the first passphrase (generation 3); then the first header (generation 1,
    # same passphrase) put back in the vault is a rollback, refused.
    pin, _ = await catalog.new_security_pin()
    await reg.change_passphrase(PASSPHRASE, use_pin)
    assert (await header_of(root)).generation == 3
    await FolderBackend(root).put(HEADER_NAME, before.to_json())
    fresh = registry(tmp_path / "server", clock)
    status = await fresh.status()
    assert status["state"] == "unknown"
    assert "RollbackError" in status["error"] and "generation 1" in status["error"]


async def test_passphrase_change_interrupted_keeps_the_vault_open(
    tmp_path: Path, clock: FakeClock, catalog: Catalog
) -> None:
    root = tmp_path / "vault"
    data_dir = tmp_path / "server"
    reg = registry(data_dir, clock)
    creds = (await reg.new_vault(folder_spec(root))).to_doc()
    await reg.register(creds, PASSPHRASE)

    async def ok() -> None:
        return None

    # Interrupted at the header put (after step a): the old passphrase still opens it.
    failing = registry(data_dir, clock, lambda spec: FailingHeaderPut(Path(spec["path"])))
    with pytest.raises(TransientError):
        await failing.change_passphrase(OTHER_PASSPHRASE, ok)
    pending = load_registration(data_dir)
    assert pending is not None and pending.pending_passphrase == OTHER_PASSPHRASE
    status = await registry(data_dir, clock).status()
    assert status["state"] == "active", status
    cleared = load_registration(data_dir)
    assert cleared is not None and cleared.pending_passphrase is None
    assert cleared.passphrase == PASSPHRASE

    # Interrupted after the header put (before step c): the pending one is promoted.
    await reg.change_passphrase(OTHER_PASSPHRASE, ok)
    done = load_registration(data_dir)
    assert done is not None
    save_registration(
        data_dir,
        done.with_changes(
            passphrase=PASSPHRASE,
            pending_passphrase=OTHER_PASSPHRASE,
            header_generation=done.header_generation - 1,
        ),
    )
    status = await registry(data_dir, clock).status()
    assert status["state"] == "active", status
    promoted = load_registration(data_dir)
    assert promoted is not None
    assert promoted.passphrase == OTHER_PASSPHRASE and promoted.pending_passphrase is None


async def test_status_without_and_with_a_vault(tmp_path: Path, clock: FakeClock) -> None:
    reg = registry(tmp_path / "server", clock)
    empty = await reg.status()
    assert empty["registered"] is False and empty["vault_id"] is None
    with pytest.raises(NotRegisteredError):
        await reg.unlocked()
    creds = (await reg.new_vault(folder_spec(tmp_path / "vault"))).to_doc()
    await reg.register(creds, PASSPHRASE)
    status = await reg.status()
    assert set(status) == set(empty)
    assert status["location"] == {"kind": "folder", "path": str(tmp_path / "vault")}
    assert status["online_recovery_points"] == 0 and status["stored_bytes"] is None
    assert PASSPHRASE not in json.dumps(status)
    vault = await reg.unlocked()
    assert vault.keys.vault_id.hex() == status["vault_id"]
    assert isinstance(reg, VaultRegistry)
