"""Catalog table `security_pins`: one-time PINs that guard destructive operations.

An operator asks for a PIN (`New-SecurityPin`) and passes it to the operation that
deletes data or makes recovery points expire. The PIN is 8 random digits, valid
`SECURITY_PIN_TTL_SECONDS` by the catalog's clock and usable once; only its SHA-256 is
stored, with what it was used for.

The PIN is consumed by one conditional UPDATE, so of two operations racing with the same
PIN only one gets it. Callers check everything else first and use the PIN last, right
before they change anything: a refused PIN leaves everything as it was.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Final

import structlog

from server.catalog_base import CatalogBase
from server.catalog_errors import CatalogError, CatalogValidationError, SecurityPinError

__all__ = ["PIN_DIGITS", "SECURITY_PIN_TTL_SECONDS", "PinTables"]

log = structlog.get_logger()

SECURITY_PIN_TTL_SECONDS: Final = 300.0
PIN_DIGITS: Final = 8
_MAX_DRAWS: Final = 5  # a fresh PIN that hits a stored hash (used or not) is drawn again


def _pin_hash(pin: str) -> str:
    return hashlib.sha256(pin.encode()).hexdigest()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


class PinTables(CatalogBase):
    async def new_security_pin(self, ttl: float = SECURITY_PIN_TTL_SECONDS) -> tuple[str, float]:
        """A fresh PIN and its expiry (unix seconds). The PIN is returned once; only its
        hash is kept."""
        if not ttl > 0:
            raise CatalogValidationError(f"security PIN lifetime must be positive, got {ttl!r}")
        async with self._write() as tx:
            for _ in range(_MAX_DRAWS):
                pin = f"{secrets.randbelow(10**PIN_DIGITS):0{PIN_DIGITS}d}"
                expires_at = tx.now + ttl
                if await tx.run(
                    "INSERT OR IGNORE INTO security_pins (pin_hash, created_at, expires_at)"
                    " VALUES (?, ?, ?)",
                    (_pin_hash(pin), tx.now, expires_at),
                ):
                    break
            else:  # pragma: no cover - five collisions in 10**8 values
                raise CatalogError(f"catalog {self.path}: no free security PIN found")
        log.info("security_pin_created", expires_at=expires_at)
        return pin, expires_at

    async def use_security_pin(self, pin: str | None, purpose: str) -> None:
        """Consume `pin` for `purpose` (a short text kept with it), or raise
        SecurityPinError: missing, wrong or already used, or expired."""
        if pin is None or not pin.strip():
            raise SecurityPinError("missing", "security PIN is missing: run New-SecurityPin")
        digest = _pin_hash(pin.strip())
        async with self._write() as tx:
            if await tx.run(
                "UPDATE security_pins SET used_at = ?, used_for = ?"
                " WHERE pin_hash = ? AND used_at IS NULL AND expires_at > ?",
                (tx.now, purpose, digest, tx.now),
            ):
                log.info("security_pin_used", purpose=purpose)
                return
            row = await tx.one(
                "SELECT used_at, expires_at FROM security_pins WHERE pin_hash = ?", (digest,)
            )
        if row is None or row["used_at"] is not None:
            log.warning("security_pin_refused", reason="wrong", purpose=purpose)
            raise SecurityPinError("wrong", "security PIN is wrong or was already used")
        log.warning("security_pin_refused", reason="expired", purpose=purpose)
        raise SecurityPinError(
            "expired",
            f"security PIN expired at {_iso(row['expires_at'])}: run New-SecurityPin for a new one",
        )
