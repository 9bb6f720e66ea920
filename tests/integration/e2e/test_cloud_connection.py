"""Get-CloudConnection, its REST routes and /metrics on the real server and CLI.

An unregistered server answers False (exit 1) with the cloud operations refused; a server
registered with a real folder vault answers True (exit 0) after a probe, in plain,
-Detailed and -Json form, and /metrics (no token) says the same in Prometheus text;
once the vault's folder is deleted, two probes make it deprovisioned (everything stopped).
These need the daemon's connectivity monitor (``ctx.cloud``, server/cloud_health.py):
without it the routes answer 503 and the CLI exits 3.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from server.cloud_status import Operation
from tests.support.stack import CliResult, Stack


def metrics(stack: Stack) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """GET /metrics without any token, parsed by prometheus-client."""
    status, body = stack.server.api("GET", "/metrics", token="not-a-token")
    assert status == 200, body
    assert isinstance(body, bytes)
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        series = out.setdefault(family.name, {})
        for sample in family.samples:
            series[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def labelled(samples: dict[tuple[tuple[str, str], ...], float], label: str) -> dict[str, float]:
    return {dict(k)[label]: v for k, v in samples.items()}


def fields(result: CliResult) -> dict[str, str]:
    pairs = (line.partition(" : ") for line in result.out.split("\n\n", 1)[0].splitlines())
    return {k.strip(): v for k, sep, v in pairs if sep}


def register_folder_vault(stack: Stack, tmp_path: Path) -> Path:
    vault, cred = tmp_path / "vault", tmp_path / "vault.cred"
    stack.cli(
        "New-Vault", "-Backend", "folder", "-Path", str(vault), "-OutFile", str(cred), check=True
    )
    stack.cli("Register-Vault", "-CredentialsFile", str(cred), "-GeneratePassphrase", check=True)
    return vault


def test_unregistered_server_is_false(stack: Stack) -> None:
    plain = stack.cli("Get-CloudConnection")
    assert (plain.code, plain.out) == (1, "False\n"), plain.err
    detailed = stack.cli("Get-CloudConnection", "-Detailed")
    assert detailed.code == 1, detailed.err
    f = fields(detailed)
    assert (f["Connected"], f["Connectivity"], f["VaultState"]) == (
        "False",
        "not_registered",
        "-",
    )
    assert "backup to cloud     stopped  backup to cloud refused: no vault registered" in (
        detailed.out
    )
    doc = stack.cli("Get-CloudConnection", "-Json").json()
    assert isinstance(doc, list) and len(doc) == 1
    assert doc[0]["connected"] is False
    assert doc[0]["operations"][Operation.BACKUP_TO_DISK.value]["allowed"] is True

    status, body = stack.server.api("GET", "/api/v1/cloud/connection", token="wrong")
    assert status == 401, body
    m = metrics(stack)
    assert m["stockade_cloud_connected"] == {(): 0.0}
    assert labelled(m["stockade_cloud_connectivity"], "state")["not_registered"] == 1.0
    assert set(labelled(m["stockade_vault_state"], "state").values()) == {0.0}
    assert labelled(m["stockade_cloud_operation_allowed"], "operation") == {
        "backup_to_cloud": 0.0,
        "backup_to_disk": 1.0,
        "restore_from_cloud": 0.0,
        "restore_from_disk": 1.0,
    }


def test_folder_vault_true_then_deprovisioned(stack: Stack, tmp_path: Path) -> None:
    vault = register_folder_vault(stack, tmp_path)
    connected_and_active(stack, vault)
    # The vault's folder deleted: a real "deprovisioned" after the configured number of
    # consecutive rejections (two by default), each seen by a probe.
    shutil.rmtree(vault)
    deprovisioned(stack)


def connected_and_active(stack: Stack, vault: Path) -> None:
    probed = stack.cli("Get-CloudConnection", "-Probe")
    assert (probed.code, probed.out) == (0, "True\n"), (probed.err, stack.server.tail())
    plain = stack.cli("Get-CloudConnection")
    assert (plain.code, plain.out) == (0, "True\n"), plain.err

    detailed = stack.cli("get-cloudconnection", "-Detailed")
    assert detailed.code == 0, detailed.err
    f = fields(detailed)
    assert (f["Connected"], f["Connectivity"], f["VaultState"]) == ("True", "connected", "active")
    assert str(vault) in f["Vault"]
    assert f["LastContact"].endswith(" ago)"), f["LastContact"]
    assert f["LastProbe"] != "-"
    table = detailed.out.split("\n\n", 1)[1].splitlines()
    assert table[0].split() == ["Operation", "Status", "Reason"]
    assert sorted(line.split("  ")[0].strip() for line in table[2:]) == [
        "backup to cloud",
        "backup to disk",
        "restore from cloud",
        "restore from disk",
    ]
    assert all(line.rstrip().endswith("allowed") for line in table[2:])

    listed = stack.cli("Get-CloudConnection", "-Probe", "-Json")
    assert listed.code == 0, listed.err
    (doc,) = listed.json()
    assert doc["connected"] is True
    assert doc["vault_state"] == "active"
    assert doc["last_probe"] is not None and doc["last_probe_iso"].endswith("Z")
    assert all(op["allowed"] for op in doc["operations"].values())

    status, rest = stack.server.api("GET", "/api/v1/cloud/connection")
    assert status == 200, rest
    assert rest["connectivity"] == "connected"
    assert json.dumps(rest)  # plain JSON, nothing exotic

    m = metrics(stack)
    assert m["stockade_cloud_connected"] == {(): 1.0}
    assert labelled(m["stockade_vault_state"], "state") == {
        "active": 1.0,
        "expired": 0.0,
        "deprovisioned": 0.0,
    }
    assert set(labelled(m["stockade_cloud_operation_allowed"], "operation").values()) == {1.0}
    (contact,) = m["stockade_cloud_last_contact_timestamp_seconds"].values()
    assert contact >= doc["last_success"]
    (size,) = m["stockade_pool_size_bytes"].values()
    (free,) = m["stockade_pool_free_bytes"].values()
    assert 0 < free <= size
    (bound,) = m["stockade_scratch_bound_bytes"].values()
    assert bound > 0


def deprovisioned(stack: Stack) -> None:
    first = stack.cli("Get-CloudConnection", "-Probe")
    assert (first.code, first.out) == (1, "False\n"), first.err
    gone = stack.cli("Get-CloudConnection", "-Probe", "-Detailed")
    assert gone.code == 1, gone.err
    f = fields(gone)
    assert (f["Connected"], f["VaultState"], f["LastErrorReason"]) == (
        "False",
        "deprovisioned",
        "not_found",
    ), gone.out
    assert f["LastError"] != "-"
    table = gone.out.split("\n\n", 1)[1].splitlines()
    assert all("  stopped  " in line for line in table[2:]), gone.out
    m = metrics(stack)
    assert m["stockade_cloud_connected"] == {(): 0.0}
    assert labelled(m["stockade_vault_state"], "state")["deprovisioned"] == 1.0
    assert set(labelled(m["stockade_cloud_operation_allowed"], "operation").values()) == {0.0}
