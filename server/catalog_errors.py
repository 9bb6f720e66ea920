"""Errors of the server catalog: one root, a shallow tree, context as attributes.

What the caller does with each:

* `NotFoundError`: the object does not exist (HTTP 404, CLI exit 1).
* `ConflictError`: a name is taken or another backup of the data source is active (409).
* `TokenError`: a registration token is unknown, used or expired; `reason` says which.
* `InvalidStateError`: the object exists but the operation does not fit its state, such as
  an illegal job transition or a job for a removed agent (409).
* `CatalogValidationError`: bad input such as a relative path in a data source spec (400).
* `SecurityPinError`: a destructive operation without a valid security PIN (403, CLI exit
  2); `reason` is "missing", "wrong" (unknown or already used) or "expired".
* `CatalogError` itself: the catalog file cannot be opened, is not a catalog, is newer than
  this code, or SQLite failed. Permanent until an operator acts.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "CatalogError",
    "CatalogValidationError",
    "ConflictError",
    "InvalidStateError",
    "NotFoundError",
    "PinFailure",
    "SecurityPinError",
    "TokenError",
    "TokenFailure",
]


class CatalogError(Exception):
    """Root of every catalog error."""


class _ObjectError(CatalogError):
    """An error about one catalog object; `kind` ("agent", "job"...) and `ident` name it."""

    def __init__(self, kind: str, ident: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.ident = ident


class NotFoundError(_ObjectError, LookupError):
    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(kind, ident, f"{kind} {ident!r} not found in the catalog")


class ConflictError(_ObjectError):
    pass


class InvalidStateError(_ObjectError):
    pass


class CatalogValidationError(CatalogError, ValueError):
    pass


TokenFailure = Literal["unknown", "used", "expired"]


class TokenError(CatalogError):
    """A registration token was refused; `reason` is "unknown", "used" or "expired"."""

    def __init__(self, reason: TokenFailure, message: str) -> None:
        super().__init__(message)
        self.reason: TokenFailure = reason


PinFailure = Literal["missing", "wrong", "expired"]


class SecurityPinError(CatalogError):
    """A security PIN was refused; `reason` is "missing", "wrong" or "expired". Nothing
    was changed by the operation that asked for it."""

    def __init__(self, reason: PinFailure, message: str) -> None:
        super().__init__(message)
        self.reason: PinFailure = reason
