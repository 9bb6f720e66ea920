"""Exceptions of the vault format and keys: one root, context as attributes.

Callers decide by class. `TamperedObjectError` and `HeaderTamperedError` are integrity
failures (subclasses of the pool's `IntegrityError`): never retried, never hidden, and no
plaintext of the failing object is ever returned. `WrongPassphraseError`,
`PassphraseTooShortError` and `WeakKdfParamsError` are the operator's to fix.
"""

from __future__ import annotations

from storage_pool.errors import IntegrityError


class VaultFormatError(Exception):
    """Root of every error of the vault format, keys and sealing."""


class PassphraseTooShortError(VaultFormatError, ValueError):
    def __init__(self, length: int, minimum: int) -> None:
        super().__init__(
            f"the vault passphrase has {length} characters; at least {minimum} are required"
            " (or let Stockade generate one)"
        )
        self.length = length
        self.minimum = minimum


class WrongPassphraseError(VaultFormatError):
    def __init__(self, vault_id: str) -> None:
        super().__init__(
            f"the passphrase does not unlock vault {vault_id}: wrong passphrase"
            " (or the key fields of the vault header were altered)"
        )
        self.vault_id = vault_id


class HeaderError(VaultFormatError):
    """The vault header is missing fields, malformed or of an unknown format version."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"vault header: {reason}")
        self.reason = reason


class WeakKdfParamsError(HeaderError):
    """The KDF parameters are below the enforced floor (a downgraded or test header)."""


class HeaderTamperedError(HeaderError, IntegrityError):
    """The header's MAC does not match: a field was changed without the vault key."""

    def __init__(self, reason: str) -> None:
        # Same message shape as HeaderError ("vault header: ..."), built by IntegrityError
        # because HeaderError's cooperative super() call would land there with one argument.
        IntegrityError.__init__(self, "vault header", reason)


class TamperedObjectError(VaultFormatError, IntegrityError):
    """A vault object does not authenticate as the object it is read as: swapped,
    truncated, bit-flipped, of another kind, or from another vault."""

    def __init__(self, name: str, kind: str, reason: str) -> None:
        IntegrityError.__init__(self, f"vault {kind} object {name}", reason)
        self.name = name
        self.kind = kind


class RollbackError(TamperedObjectError):
    """An older, authentic object is presented where a newer one is expected."""


class ObjectFormatError(VaultFormatError):
    """An authentic object's content cannot be decoded: a bug or a newer format."""

    def __init__(self, name: str, kind: str, reason: str) -> None:
        super().__init__(f"vault {kind} object {name}: {reason}")
        self.name = name
        self.kind = kind
        self.reason = reason
