"""Security PINs: 8 digits, only the hash stored, used once, within 5 minutes."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import pytest

from server.catalog import Catalog, CatalogValidationError, SecurityPinError
from tests.unit.server.catalog_fixture import T0, FakeClock


async def test_a_pin_is_8_digits_and_only_its_hash_is_stored(
    tmp_path: Path, catalog: Catalog
) -> None:
    pin, expires_at = await catalog.new_security_pin()
    assert len(pin) == 8 and pin.isdigit()
    assert expires_at == T0 + 300
    with sqlite3.connect(tmp_path / "catalog.sqlite") as db:
        rows = db.execute("SELECT * FROM security_pins").fetchall()
    assert rows == [(hashlib.sha256(pin.encode()).hexdigest(), T0, T0 + 300, None, None)]


async def test_pins_differ(catalog: Catalog) -> None:
    pins = {(await catalog.new_security_pin())[0] for _ in range(20)}
    assert len(pins) == 20


async def test_a_pin_works_once(tmp_path: Path, catalog: Catalog, clock: FakeClock) -> None:
    pin, _ = await catalog.new_security_pin()
    clock.now += 10
    await catalog.use_security_pin(pin, "Remove-ProtectionGroup -DeleteData web")
    with pytest.raises(SecurityPinError, match=r"^security PIN is wrong or was already used$") as i:
        await catalog.use_security_pin(pin, "again")
    assert i.value.reason == "wrong"
    with sqlite3.connect(tmp_path / "catalog.sqlite") as db:
        used = db.execute("SELECT used_at, used_for FROM security_pins").fetchall()
    assert used == [(T0 + 10, "Remove-ProtectionGroup -DeleteData web")]


@pytest.mark.parametrize("pin", [None, "", "   "])
async def test_a_missing_pin(catalog: Catalog, pin: str | None) -> None:
    with pytest.raises(
        SecurityPinError, match=r"^security PIN is missing: run New-SecurityPin$"
    ) as info:
        await catalog.use_security_pin(pin, "x")
    assert info.value.reason == "missing"


async def test_a_wrong_pin_does_not_use_up_the_right_one(catalog: Catalog) -> None:
    pin, _ = await catalog.new_security_pin()
    wrong = f"{(int(pin) + 1) % 10**8:08d}"
    with pytest.raises(SecurityPinError, match="wrong or was already used"):
        await catalog.use_security_pin(wrong, "x")
    await catalog.use_security_pin(f" {pin} ", "x")  # pasted with blanks


async def test_a_pin_expires_after_5_minutes_by_the_injected_clock(
    catalog: Catalog, clock: FakeClock
) -> None:
    pin, expires_at = await catalog.new_security_pin()
    later, _ = await catalog.new_security_pin()
    clock.now = expires_at - 0.001
    await catalog.use_security_pin(later, "just in time")
    clock.now = expires_at  # expiry is exclusive
    with pytest.raises(
        SecurityPinError, match=r"^security PIN expired at 2023-11-14T22:18:20\+00:00"
    ) as info:
        await catalog.use_security_pin(pin, "x")
    assert info.value.reason == "expired"


async def test_two_racing_uses_of_one_pin_let_one_through(catalog: Catalog) -> None:
    pin, _ = await catalog.new_security_pin()
    results = await asyncio.gather(
        *(catalog.use_security_pin(pin, f"use {i}") for i in range(5)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, SecurityPinError) for r in results if r is not None)


async def test_lifetime_must_be_positive(catalog: Catalog) -> None:
    with pytest.raises(CatalogValidationError, match="must be positive"):
        await catalog.new_security_pin(0)
