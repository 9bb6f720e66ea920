"""Get-CloudConnection's rendering and exit codes, from real `CloudStatus` values in every
state of the policy table (the REST document is `connection_json(status)`, as the server
sends it), plus the usual error path when the server cannot be reached."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from server.cli.cmdlets_connection import exit_code, human_age, render_detailed
from server.cloud_status import CloudStatus, Connectivity, ContactFailure
from server.operator_connection import connection_json, iso_utc
from storage_pool.vault.header import VaultState
from tests.unit.cli.conftest import Cli

DAY = 86400.0
NOW = 1_767_268_800.0  # 2026-01-01 12:00 UTC
LOST_AFTER = 15 * DAY


def status(
    connectivity: Connectivity,
    vault_state: VaultState | None,
    *,
    last_success: float | None = NOW - 120,
    last_failure: float | None = None,
    error: str | None = None,
    reason: ContactFailure | None = None,
) -> CloudStatus:
    registered = connectivity is not Connectivity.NOT_REGISTERED
    return CloudStatus(
        connectivity=connectivity,
        vault_state=vault_state,
        vault="folder /srv/vault" if registered else None,
        last_success=last_success if registered else None,
        last_failure=last_failure,
        last_error=error,
        last_reason=reason,
        last_probe=(last_failure or last_success) if registered else None,
        checked_at=NOW,
        lost_after_seconds=LOST_AFTER,
    )


def doc_of(s: CloudStatus) -> dict[str, Any]:
    # Through JSON, as the CLI receives it.
    decoded: dict[str, Any] = json.loads(json.dumps(connection_json(s)))
    return decoded


def fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" : ")
        if sep and key.strip() and " " not in key.strip():
            out[key.strip()] = value
    return out


def operations(text: str) -> dict[str, tuple[str, str]]:
    """Operation -> (status, reason) from the table under the key/value block."""
    lines = text.split("\n\n", 1)[1].splitlines()
    assert lines[0].split() == ["Operation", "Status", "Reason"]
    rows: dict[str, tuple[str, str]] = {}
    for line in lines[2:]:
        for verdict in ("allowed", "stopped"):
            name, sep, rest = line.partition(f"  {verdict}")
            if sep:
                rows[name.strip()] = (verdict, rest.strip())
    return rows


def test_connected_active_is_true_with_everything_allowed() -> None:
    doc = doc_of(status(Connectivity.CONNECTED, VaultState.ACTIVE))
    assert exit_code(doc) == 0
    text = render_detailed(doc)
    f = fields(text)
    assert f["Connected"] == "True"
    assert f["Connectivity"] == "connected"
    assert f["VaultState"] == "active"
    assert f["Vault"] == "folder /srv/vault"
    assert f["LastContact"].endswith("(2 minutes ago)")
    assert f["LastError"] == "-"
    assert f["LastErrorReason"] == "-"
    assert f["LostAfter"] == "15 days"
    assert operations(text) == {
        "backup to cloud": ("allowed", ""),
        "backup to disk": ("allowed", ""),
        "restore from cloud": ("allowed", ""),
        "restore from disk": ("allowed", ""),
    }


def test_disconnected_is_false_but_nothing_is_stopped_yet() -> None:
    doc = doc_of(
        status(
            Connectivity.DISCONNECTED,
            VaultState.ACTIVE,
            last_success=NOW - 3 * 3600,
            last_failure=NOW - 60,
            error="connect to 10.0.0.9:443 timed out",
            reason=ContactFailure.TIMEOUT,
        )
    )
    assert exit_code(doc) == 1
    text = render_detailed(doc)
    f = fields(text)
    assert f["Connected"] == "False"
    assert f["Connectivity"] == "disconnected"
    assert f["LastContact"].endswith("(3 hours ago)")
    assert f["LastError"] == "connect to 10.0.0.9:443 timed out"
    assert f["LastErrorReason"] == "timeout"
    assert {v for v, _ in operations(text).values()} == {"allowed"}


def test_lost_for_more_than_15_days_stops_backups() -> None:
    doc = doc_of(
        status(
            Connectivity.LOST,
            VaultState.ACTIVE,
            last_success=NOW - 16 * DAY - 2 * 3600,
            last_failure=NOW - 300,
            error="name or service not known",
            reason=ContactFailure.DNS,
        )
    )
    assert exit_code(doc) == 1
    text = render_detailed(doc)
    assert fields(text)["LastContact"].endswith("(16 days 2 hours ago)")
    ops = operations(text)
    assert ops["backup to cloud"][0] == "stopped"
    assert ops["backup to disk"][0] == "stopped"
    assert "connectivity lost, vault active" in ops["backup to disk"][1]
    assert "no successful contact for 16.1 days" in ops["backup to disk"][1]
    assert ops["restore from cloud"] == ("allowed", "")
    assert ops["restore from disk"] == ("allowed", "")


def test_expired_vault_allows_restores_only() -> None:
    doc = doc_of(
        status(
            Connectivity.CONNECTED,
            VaultState.EXPIRED,
            last_failure=NOW - 60,
            error="403 AuthenticationFailed: signed expiry time has passed",
            reason=ContactFailure.AUTHENTICATION,
        )
    )
    assert exit_code(doc) == 1
    text = render_detailed(doc)
    f = fields(text)
    assert (f["Connected"], f["VaultState"], f["LastErrorReason"]) == (
        "False",
        "expired",
        "authentication",
    )
    ops = operations(text)
    assert [ops[k][0] for k in sorted(ops)] == ["stopped", "stopped", "allowed", "allowed"]


def test_deprovisioned_vault_stops_everything() -> None:
    doc = doc_of(
        status(
            Connectivity.CONNECTED,
            VaultState.DEPROVISIONED,
            reason=ContactFailure.NOT_FOUND,
            error="container stockade-vault not found",
        )
    )
    assert exit_code(doc) == 1
    ops = operations(render_detailed(doc))
    assert {v for v, _ in ops.values()} == {"stopped"}
    assert "the vault is gone" in ops["restore from cloud"][1]


def test_not_registered_refuses_cloud_operations_only() -> None:
    doc = doc_of(status(Connectivity.NOT_REGISTERED, None))
    assert exit_code(doc) == 1
    text = render_detailed(doc)
    f = fields(text)
    assert (f["Connectivity"], f["VaultState"], f["Vault"], f["LastContact"]) == (
        "not_registered",
        "-",
        "-",
        "never",
    )
    ops = operations(text)
    assert ops["backup to cloud"] == ("stopped", "backup to cloud refused: no vault registered")
    assert ops["backup to disk"] == ("allowed", "")


def test_the_json_document_carries_iso_times_and_the_summary() -> None:
    doc = doc_of(status(Connectivity.LOST, VaultState.EXPIRED, last_success=NOW - 20 * DAY))
    assert doc["connected"] is False
    assert doc["checked_at"] == NOW
    assert doc["checked_at_iso"] == "2026-01-01T12:00:00.000Z"
    assert doc["last_success_iso"] == iso_utc(NOW - 20 * DAY) == "2025-12-12T12:00:00.000Z"
    assert doc["last_failure_iso"] is None
    assert doc["since_contact_seconds"] == 20 * DAY
    assert doc["summary"] == "connectivity lost, vault expired"
    assert doc["operations"]["restore_from_cloud"] == {"allowed": True, "reason": ""}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.4, "0 seconds"),
        (1, "1 second"),
        (90, "1 minute 30 seconds"),
        (3600, "1 hour"),
        (DAY + 30, "1 day"),
        (16 * DAY + 2 * 3600 + 59, "16 days 2 hours"),
    ],
)
def test_human_age(seconds: float | None, text: str) -> None:
    assert human_age(seconds) == text


def test_server_down_is_exit_3(cli: Cli) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    result = cli("Get-CloudConnection", "-Detailed", "-Server", url, "-Token", "t")
    assert (result.code, result.out) == (3, "")
    assert result.err == f"stockade: Get-CloudConnection: cannot reach {url}: connection refused\n"


def test_help_names_the_switches(cli: Cli) -> None:
    result = cli("help", "Get-CloudConnection", connect=False)
    assert result.code == 0
    assert "-Detailed" in result.out
    assert "-Probe" in result.out
    assert "Not available yet" not in result.out
