"""Vault header and keys: passphrase rules, KDF floor, wrong passphrase, tampering, re-wrap."""

from __future__ import annotations

import json
from typing import Any

import pytest

from storage_pool.errors import IntegrityError
from storage_pool.vault.format_errors import (
    HeaderError,
    HeaderTamperedError,
    PassphraseTooShortError,
    RollbackError,
    WeakKdfParamsError,
    WrongPassphraseError,
)
from storage_pool.vault.header import (
    VaultHeader,
    VaultState,
    create_vault,
    rewrap,
    unlock,
    with_state,
)
from storage_pool.vault.keys import (
    KDF_DEFAULT,
    KDF_FLOOR,
    KDF_TESTING,
    MIN_PASSPHRASE_CHARS,
    KdfParams,
    generate_passphrase,
)

PASS = "correct horse battery staple"
OTHER = "another long passphrase!"


def _new() -> tuple[VaultHeader, bytes]:
    header, keys = create_vault(
        PASS, now_ns=1_700_000_000, params=KDF_TESTING, min_params=KDF_TESTING
    )
    return VaultHeader.from_json(header.to_json()), keys.master


def _edit(header: VaultHeader, change: dict[str, Any]) -> VaultHeader:
    doc = json.loads(header.to_json())
    for path, value in change.items():
        target = doc
        *parents, last = path.split(".")
        for part in parents:
            target = target[part]
        target[last] = value
    return VaultHeader.from_json(json.dumps(doc).encode())


def test_round_trip_through_json() -> None:
    header, master = _new()
    keys = unlock(header, PASS, min_params=KDF_TESTING)
    assert keys.master == master
    assert header.state is VaultState.ACTIVE
    assert master.hex() not in header.to_json().decode()
    assert master.hex() not in repr(keys)


def test_default_params_meet_the_floor_and_open_with_the_production_minimum() -> None:
    header, keys = create_vault(PASS, now_ns=1)
    assert header.kdf == KDF_DEFAULT
    reopened = unlock(VaultHeader.from_json(header.to_json()), PASS)
    assert reopened.master == keys.master


def test_wrong_passphrase_is_refused_by_name() -> None:
    header, _ = _new()
    with pytest.raises(WrongPassphraseError, match="does not unlock vault") as info:
        unlock(header, OTHER, min_params=KDF_TESTING)
    assert header.vault_id_hex in str(info.value)


@pytest.mark.parametrize("short", ["", "x" * (MIN_PASSPHRASE_CHARS - 1)])
def test_short_passphrase_is_refused_everywhere(short: str) -> None:
    with pytest.raises(PassphraseTooShortError, match="at least 16"):
        create_vault(short, now_ns=1, params=KDF_TESTING, min_params=KDF_TESTING)
    header, _ = _new()
    with pytest.raises(PassphraseTooShortError):
        unlock(header, short, min_params=KDF_TESTING)
    with pytest.raises(PassphraseTooShortError):
        rewrap(header, PASS, short, min_params=KDF_TESTING)


def test_generated_passphrases_are_long_and_unique() -> None:
    made = {generate_passphrase() for _ in range(50)}
    assert len(made) == 50
    for phrase in made:
        assert len(phrase) >= MIN_PASSPHRASE_CHARS
        assert len(phrase.replace("-", "")) == 32


def test_weak_header_is_refused_before_any_derivation() -> None:
    """A hostile header cannot downgrade the KDF: the floor applies by default."""
    header, _ = _new()
    with pytest.raises(WeakKdfParamsError, match="weaker than the enforced minimum"):
        unlock(header, PASS)
    with pytest.raises(WeakKdfParamsError):
        create_vault(PASS, now_ns=1, params=KdfParams(32 * 1024, 3, 4))
    with pytest.raises(WeakKdfParamsError):
        create_vault(PASS, now_ns=1, params=KdfParams(64 * 1024, 2, 4))


def test_hostile_ceilings_and_shapes_are_refused() -> None:
    header, _ = _new()
    huge = _edit(header, {"kdf.memory_kib": 1 << 40})
    with pytest.raises(HeaderError, match="exceed the ceiling"):
        unlock(huge, PASS, min_params=KDF_TESTING)
    for change in (
        {"format_version": 2},
        {"kdf.name": "pbkdf2"},
        {"kdf.iterations": "3"},
        {"kdf.iterations": True},
        {"state": "gone"},
        {"master_key.wrapped": "!!"},
        {"extra": 1},
    ):
        with pytest.raises(HeaderError):
            _edit(header, change)
    with pytest.raises(HeaderError, match="not JSON"):
        VaultHeader.from_json(b"\xff{")


@pytest.mark.parametrize(
    "change",
    [
        {"kdf.iterations": 2},
        {"kdf.salt": "AAAAAAAAAAAAAAAAAAAAAA=="},
        {"master_key.nonce": "AAAAAAAAAAAAAAAA"},
        {"vault_id": "00" * 16},
    ],
)
def test_changing_key_fields_breaks_the_unwrap(change: dict[str, Any]) -> None:
    header, _ = _new()
    with pytest.raises(WrongPassphraseError):
        unlock(_edit(header, change), PASS, min_params=KDF_TESTING)


@pytest.mark.parametrize(
    "change", [{"state": "deprovisioned"}, {"generation": 9}, {"created_ns": 5}]
)
def test_changing_authenticated_fields_is_detected(change: dict[str, Any]) -> None:
    """The state is plain but MACed: a cloud-side writer cannot deprovision the vault."""
    header, _ = _new()
    with pytest.raises(HeaderTamperedError, match="MAC does not match") as info:
        unlock(_edit(header, change), PASS, min_params=KDF_TESTING)
    assert isinstance(info.value, IntegrityError)


def test_state_change_needs_the_key_and_bumps_the_generation() -> None:
    header, _ = _new()
    keys = unlock(header, PASS, min_params=KDF_TESTING)
    expired = VaultHeader.from_json(with_state(header, keys, VaultState.EXPIRED).to_json())
    assert expired.state is VaultState.EXPIRED
    assert expired.generation == header.generation + 1
    assert unlock(expired, PASS, min_params=KDF_TESTING).master == keys.master
    other_keys = unlock(_new()[0], PASS, min_params=KDF_TESTING)
    with pytest.raises(HeaderTamperedError):
        with_state(header, other_keys, VaultState.DEPROVISIONED)


def test_an_older_header_is_refused_against_the_generation_seen() -> None:
    header, _ = _new()
    newer = rewrap(header, PASS, OTHER, min_params=KDF_TESTING)
    unlock(newer, OTHER, min_params=KDF_TESTING, min_generation=newer.generation)
    with pytest.raises(RollbackError, match="older header was restored"):
        unlock(header, PASS, min_params=KDF_TESTING, min_generation=newer.generation)


def test_rewrap_keeps_the_master_key_and_retires_the_old_passphrase() -> None:
    header, master = _new()
    newer = VaultHeader.from_json(rewrap(header, PASS, OTHER, min_params=KDF_TESTING).to_json())
    assert newer.vault_id == header.vault_id
    assert newer.salt != header.salt
    assert unlock(newer, OTHER, min_params=KDF_TESTING).master == master
    with pytest.raises(WrongPassphraseError):
        unlock(newer, PASS, min_params=KDF_TESTING)
    with pytest.raises(WrongPassphraseError):
        rewrap(newer, PASS, "yet another passphrase", min_params=KDF_TESTING)


def test_rewrap_can_raise_the_kdf_cost() -> None:
    header, master = _new()
    stronger = rewrap(header, PASS, OTHER, params=KDF_FLOOR, min_params=KDF_TESTING)
    assert stronger.kdf == KDF_FLOOR
    assert unlock(stronger, OTHER).master == master
