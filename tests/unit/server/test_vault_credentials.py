"""The vault credentials file and backend specs: checksum, expiry, refusals."""

from __future__ import annotations

import copy

import pytest

from server.vault_backends import BackendSpecError, parse_spec, public_location
from server.vault_credentials import (
    CREDENTIALS_TTL_SECONDS,
    CredentialsError,
    CredentialsExpiredError,
    VaultCredentials,
)
from tests.unit.server.catalog_fixture import T0

SPEC = {"kind": "folder", "path": "/srv/vault"}


def test_round_trip_and_48_hours() -> None:
    creds = VaultCredentials.issue(dict(SPEC), None, T0)
    again = VaultCredentials.from_doc(creds.to_doc())
    assert again == creds
    assert again.expires_at == T0 + 48 * 3600 == T0 + CREDENTIALS_TTL_SECONDS
    again.check_fresh(T0 + 48 * 3600 - 1)
    with pytest.raises(CredentialsExpiredError, match=r"expired at 2023-11-16T.*New-Vault"):
        again.check_fresh(T0 + 48 * 3600)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("expires_at", T0 + 1e9),
        ("backend", {"kind": "folder", "path": "/elsewhere"}),
        ("vault_id", "ab" * 16),
        ("credentials_id", "cd" * 16),
    ],
)
def test_hand_edited_file_is_refused(field: str, value: object) -> None:
    doc = VaultCredentials.issue(dict(SPEC), None, T0).to_doc()
    doc[field] = value
    with pytest.raises(CredentialsError, match="does not match its checksum"):
        VaultCredentials.from_doc(doc)


def test_missing_or_extra_fields_and_foreign_documents() -> None:
    doc = VaultCredentials.issue(dict(SPEC), None, T0).to_doc()
    short = copy.deepcopy(doc)
    del short["checksum"]
    with pytest.raises(CredentialsError, match="incomplete"):
        VaultCredentials.from_doc(short)
    extra = copy.deepcopy(doc)
    extra["note"] = "x"
    with pytest.raises(CredentialsError, match="incomplete or has unknown fields"):
        VaultCredentials.from_doc(extra)
    with pytest.raises(CredentialsError, match="not a Stockade vault credentials file"):
        VaultCredentials.from_doc({"format": "something else"})
    with pytest.raises(CredentialsError, match="not a Stockade vault credentials file"):
        VaultCredentials.from_doc([1, 2])


def test_backend_specs() -> None:
    assert (
        parse_spec(
            {"kind": "s3", "bucket": "bkt", "access_key": "k", "secret_key": "s", "prefix": "a/b"}
        )["prefix"]
        == "a/b/"
    )
    azure = parse_spec(
        {
            "kind": "azure",
            "container": "vault",
            "connection_string": "AccountName=dev;AccountKey=secret;BlobEndpoint=http://h/dev",
        }
    )
    shown = public_location(azure)
    assert "connection_string" not in shown and "secret" not in repr(shown)
    assert shown["account"] == "http://h/dev"
    s3 = public_location(
        parse_spec({"kind": "s3", "bucket": "bkt", "access_key": "AK", "secret_key": "SK"})
    )
    assert "AK" not in repr(s3) and "SK" not in repr(s3)
    for bad, message in [
        ({"kind": "ftp"}, "kind must be one of"),
        ({"kind": "folder", "path": "relative"}, "absolute"),
        ({"kind": "folder"}, "needs 'path'"),
        ({"kind": "folder", "path": "/x", "bucket": "b"}, "unknown field"),
        ({"kind": "azure", "container": "c1c"}, "connection string or an account URL"),
        ({"kind": "azure", "container": "c1c", "account_url": "https://a"}, "SAS"),
        ({"kind": "azure", "container": "Bad_Name", "connection_string": "x"}, "container name"),
        ({"kind": "s3", "bucket": "b", "access_key": "k", "secret_key": "s"}, "bucket name"),
        (
            {"kind": "s3", "bucket": "bkt", "access_key": "k", "secret_key": "s", "prefix": "../x"},
            "prefix",
        ),
    ]:
        with pytest.raises(BackendSpecError, match=message):
            parse_spec(bad)
