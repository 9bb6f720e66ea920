"""Backend specs: where a vault lives and how to reach it, as a small JSON object.

A spec is what New-Vault receives, what the vault credentials file carries and what the
server keeps in its registration (both files 0600). Kinds and fields::

    {"kind": "folder", "path": "/abs/dir"}
    {"kind": "azure", "container": C, "prefix"?: P,
     "connection_string": CS}                          or
     "account_url": URL, "sas": TOKEN}                 (exactly one of the two forms)
    {"kind": "s3", "bucket": B, "prefix"?: P, "endpoint"?: URL, "region"?: R,
     "access_key": K, "secret_key": S}

`parse_spec` checks a spec and returns it normalised (a prefix always ends with "/");
`public_location` is the same without secrets, for Get-Vault and logs; `open_backend`
builds the `VaultBackend`, wrapped in `Retrying` so a transient error during registration
is retried within a short budget.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from storage_pool.vault.azure import AzureBackend
from storage_pool.vault.backend import VaultBackend
from storage_pool.vault.folder import FolderBackend
from storage_pool.vault.retry import Retrying, RetryPolicy
from storage_pool.vault.s3 import S3Backend

__all__ = [
    "KINDS",
    "BackendSpecError",
    "describe",
    "open_backend",
    "parse_spec",
    "public_location",
]

KINDS: Final = ("folder", "azure", "s3")
# Registration makes a handful of calls; an operator waits for them, so the budget is short.
REGISTRATION_RETRY: Final = RetryPolicy(initial=0.5, maximum=5.0, budget=20.0)

_FIELDS: Final[dict[str, tuple[frozenset[str], frozenset[str]]]] = {
    # kind: (required, optional)
    "folder": (frozenset({"path"}), frozenset()),
    "azure": (
        frozenset({"container"}),
        frozenset({"prefix", "connection_string", "account_url", "sas"}),
    ),
    "s3": (
        frozenset({"bucket", "access_key", "secret_key"}),
        frozenset({"prefix", "endpoint", "region"}),
    ),
}
_SECRETS: Final = frozenset({"connection_string", "sas", "secret_key", "access_key"})
_CONTAINER: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])\Z")
_BUCKET: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_PREFIX: Final = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_.-]*/){1,4}\Z")


class BackendSpecError(ValueError):
    """A backend spec is incomplete or invalid; the message names the field."""


def parse_spec(doc: Any) -> dict[str, Any]:
    """The spec `doc`, checked and normalised, or BackendSpecError."""
    if not isinstance(doc, Mapping):
        raise BackendSpecError("the vault backend must be a JSON object with a 'kind'")
    kind = doc.get("kind")
    if kind not in _FIELDS:
        raise BackendSpecError(
            f"vault backend kind must be one of {', '.join(KINDS)}, not {kind!r}"
        )
    required, optional = _FIELDS[kind]
    extra = sorted(set(doc) - required - optional - {"kind"})
    if extra:
        raise BackendSpecError(f"unknown field(s) {', '.join(extra)} for a {kind} vault")
    spec: dict[str, Any] = {"kind": kind}
    for name in sorted(required | optional):
        value = doc.get(name)
        if value is None or value == "":
            if name in required:
                raise BackendSpecError(f"a {kind} vault needs {name!r}")
            continue
        if not isinstance(value, str):
            raise BackendSpecError(f"field {name!r} of a {kind} vault must be a string")
        spec[name] = value
    if "prefix" in spec:
        spec["prefix"] = _prefix(spec["prefix"])
    if kind == "folder" and not Path(spec["path"]).is_absolute():
        raise BackendSpecError(f"folder vault path must be absolute: {spec['path']!r}")
    if kind == "azure":
        _check_azure(spec)
    if kind == "s3" and not _BUCKET.match(spec["bucket"]):
        raise BackendSpecError(f"s3 bucket name {spec['bucket']!r} is not valid")
    return spec


def _prefix(given: str) -> str:
    prefix = given.strip("/") + "/"
    if not _PREFIX.match(prefix):
        raise BackendSpecError(f"prefix {given!r}: segments of [A-Za-z0-9_.-] separated by '/'")
    return prefix


def _check_azure(spec: Mapping[str, Any]) -> None:
    if ("connection_string" in spec) == ("account_url" in spec):
        raise BackendSpecError(
            "an azure vault needs either a connection string or an account URL with a SAS"
        )
    if "account_url" in spec and "sas" not in spec:
        raise BackendSpecError("an azure vault given by account URL needs a SAS token")
    if "sas" in spec and "account_url" not in spec:
        raise BackendSpecError("a SAS token goes with an account URL, not a connection string")
    if not _CONTAINER.match(spec["container"]):
        raise BackendSpecError(
            f"azure container name {spec['container']!r}: 3-63 lower-case letters,"
            " digits and dashes"
        )


def public_location(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec without credentials (what Get-Vault shows)."""
    location = {k: v for k, v in spec.items() if k not in _SECRETS}
    if spec.get("kind") == "azure" and "connection_string" in spec:
        location["account"] = _azure_account(spec["connection_string"])
    return location


def describe(spec: Mapping[str, Any]) -> str:
    """One line naming the place, no secrets."""
    kind = spec.get("kind")
    prefix = spec.get("prefix", "")
    if kind == "folder":
        return f"folder {spec.get('path')}"
    if kind == "azure":
        account = spec.get("account_url") or _azure_account(spec.get("connection_string", ""))
        return f"azure {account} container {spec.get('container')}/{prefix}".rstrip("/")
    at = f" at {spec['endpoint']}" if spec.get("endpoint") else ""
    return f"s3 bucket {spec.get('bucket')}/{prefix}".rstrip("/") + at


def _azure_account(connection_string: str) -> str:
    parts = dict(item.split("=", 1) for item in connection_string.split(";") if "=" in item)
    return parts.get("BlobEndpoint") or parts.get("AccountName") or "(account)"


def open_backend(
    spec: Mapping[str, Any], *, retry: RetryPolicy | None = REGISTRATION_RETRY
) -> VaultBackend:
    """A backend for a checked spec (see `parse_spec`); the caller closes it."""
    kind = spec["kind"]
    prefix = spec.get("prefix", "")
    backend: VaultBackend
    if kind == "folder":
        # The folder backend has no prefix: the path is the container.
        backend = FolderBackend(Path(spec["path"]))
    elif kind == "azure":
        backend = AzureBackend(
            spec["container"],
            connection_string=spec.get("connection_string"),
            account_url=spec.get("account_url"),
            credential=spec.get("sas"),
            prefix=prefix,
        )
    elif kind == "s3":
        backend = S3Backend(
            spec["bucket"],
            prefix=prefix,
            endpoint_url=spec.get("endpoint"),
            region=spec.get("region") or "us-east-1",
            access_key_id=spec["access_key"],
            secret_access_key=spec["secret_key"],
        )
    else:  # pragma: no cover - parse_spec refuses other kinds
        raise BackendSpecError(f"unknown vault backend kind {kind!r}")
    return backend if retry is None else Retrying(backend, retry)
