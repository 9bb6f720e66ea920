"""The cmdlets against a real aiohttp server speaking the documented REST API (fake_api.py)."""

import json
import os
import socket
import subprocess
import sysconfig
from pathlib import Path

import pytest

from tests.unit.cli.conftest import Cli
from tests.unit.cli.fake_api import TOKEN, FakeApi, running_fake_api

STOCKADE = Path(sysconfig.get_path("scripts")) / "stockade"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------- exit 3 and 0


def test_server_down_is_exit_3(cli: Cli) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = cli("Get-Agent", "-Server", url, "-Token", TOKEN)
    assert (result.code, result.out) == (3, "")
    assert result.err == f"stockade: Get-Agent: cannot reach {url}: connection refused\n"


def test_bad_token_is_exit_3(api: FakeApi, cli: Cli) -> None:
    result = cli("Get-Agent", "-Json", "-Server", api.url, "-Token", "wrong")
    assert (result.code, result.out) == (3, "")
    assert result.err == (
        f"stockade: Get-Agent: {api.url} refused the operator token (401: unknown operator token)\n"
    )
    assert api.last("GET", "/agents").query == {}


@pytest.mark.parametrize("name", ["Get-Agent", "get-agent", "GET-AGENT"])
def test_get_agent_json_is_a_list(api_cli: Cli, name: str) -> None:
    result = api_cli(name, "-Json")
    assert result.code == 0, result.err
    agents = result.json()
    assert isinstance(agents, list)
    assert [a["name"] for a in agents] == ["db01", "web01"]
    assert agents[1]["last_seen_at"] == 1_767_268_800.0  # raw numbers in -Json


def test_double_dash_parameters(api: FakeApi, cli: Cli) -> None:
    result = cli("get-agent", "--name", "web01", "--json", "--server", api.url, "--token", TOKEN)
    assert result.code == 0, result.err
    assert [a["id"] for a in result.json()] == ["ag-web01"]


def test_get_agent_table(api_cli: Cli) -> None:
    result = api_cli("Get-Agent", "-Name", "WEB*")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["Name", "Id", "Online", "LastSeen", "LastBackup", "Version"]
    assert lines[2].split()[:3] == ["web01", "ag-web01", "True"]


def test_get_agent_unknown_name_is_exit_2(api_cli: Cli) -> None:
    result = api_cli("Get-Agent", "nosuch", "-Json")
    assert (result.code, result.out) == (2, "")
    assert "no agent named 'nosuch'" in result.err


def test_environment_supplies_server_and_token(
    api: FakeApi, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOCKADE_SERVER", api.url)
    monkeypatch.setenv("STOCKADE_TOKEN", TOKEN)
    result = cli("Get-StoragePool", "-Json")
    assert result.code == 0, result.err
    pools = result.json()
    assert isinstance(pools, list) and pools[0]["dedup_ratio"] == 3.0


def test_cli_config_file_supplies_server_and_token(api: FakeApi, cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "cli.toml"  # the path the autouse fixture points STOCKADE_CLI_CONFIG to
    config.write_text(f'server_url = "{api.url}"\ntoken = "{TOKEN}"\n', encoding="utf-8")
    config.chmod(0o644)
    result = cli("Get-StoragePool")
    assert result.code == 0, result.err
    assert "StoredSize     : 5.0 GiB" in result.out
    assert "DedupRatio     : 3.00" in result.out
    assert "readable by group or others" in result.err


def test_subprocess_against_the_api(api: FakeApi) -> None:
    env = {
        **os.environ,
        "STOCKADE_SERVER": api.url,
        "STOCKADE_TOKEN": TOKEN,
        "STOCKADE_CLI_CONFIG": "/nonexistent/cli.toml",
    }
    result = subprocess.run(
        [str(STOCKADE), "get-job", "-State", "failed", "-Json"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert [j["id"] for j in json.loads(result.stdout)] == ["101"]


# ----------------------------------------------------------------------- agents


def test_new_agent_token_prints_the_register_line(api: FakeApi, api_cli: Cli) -> None:
    result = api_cli("New-AgentToken", "-TtlMinutes", "30")
    assert result.code == 0, result.err
    assert "Token   : reg-token-xyz" in result.out
    assert f"  stockade-agent register --server {api.url} --token reg-token-xyz\n" in result.out
    assert "loopback address" in result.err
    assert api.last("POST", "/agent-tokens").body == {"ttl_minutes": 30}
    as_json = api_cli("New-AgentToken", "-Json").json()
    assert as_json["token"] == "reg-token-xyz"
    assert as_json["register_command"].endswith("--token reg-token-xyz")


def test_remove_agent_with_data(api: FakeApi, api_cli: Cli) -> None:
    result = api_cli("Remove-Agent", "-Name", "db01", "-DeleteData")
    assert result.code == 0, result.err
    assert result.out == "Removed agent db01 (id ag-db01) and its recovery points.\n"
    assert api.last("DELETE", "/agents/db01").query == {"delete_data": "1"}
    again = api_cli("Remove-Agent", "db01")
    assert (again.code, again.err) == (2, "stockade: Remove-Agent: no agent 'db01'\n")


# ----------------------------------------------------------------------- data sources


def test_get_data_source_for_an_agent(api: FakeApi, api_cli: Cli) -> None:
    result = api_cli("Get-DataSource", "-Agent", "WEB01", "-Json")
    assert result.code == 0, result.err
    assert [d["name"] for d in result.json()] == ["/etc", "/srv"]
    assert api.last("GET", "/data-sources").query == {"agent": "ag-web01"}


def test_new_data_source_sends_lists(api: FakeApi, api_cli: Cli) -> None:
    result = api_cli(
        "New-DataSource", "-Agent", "db01", "-Name", "pg", "-Path", "/var/lib/pg,/etc/pg",
        "-Path", "/opt/pg", "-Exclude", "*.tmp",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert api.last("POST", "/data-sources").body == {
        "agent": "ag-db01",
        "name": "pg",
        "paths": ["/var/lib/pg", "/etc/pg", "/opt/pg"],
        "excludes": ["*.tmp"],
    }
    assert "db01   pg" in result.out


def test_ambiguous_data_source_lists_candidates(api: FakeApi, api_cli: Cli) -> None:
    result = api_cli("Remove-DataSource", "-DataSource", "/srv")
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        "stockade: Remove-DataSource: data source '/srv' is ambiguous; candidates: "
        "web01:/srv (id ds-web-srv), db01:/srv (id ds-db-srv)\n"
    )
    assert not [r for r in api.requests if r.method == "DELETE"]


def test_remove_data_source_by_agent_and_name(api: FakeApi, api_cli: Cli) -> None:
    result = api_cli("Remove-DataSource", "db01:/srv")
    assert result.code == 0, result.err
    assert result.out == "Removed data source db01:/srv (id ds-db-srv).\n"
    api.last("DELETE", "/data-sources/ds-db-srv")


# ----------------------------------------------------------------------- backup and RPs


def test_start_backup_without_wait(api: FakeApi, api_cli: Cli) -> None:
    result = api_cli("Start-Backup", "-DataSource", "web01:/etc", "-Json")
    assert result.code == 0, result.err
    assert result.json()["state"] == "queued"
    assert api.last("POST", "/jobs/backup").body == {"data_source": "ds-web-etc"}


def test_start_backup_wait_returns_the_final_state(api: FakeApi, api_cli: Cli) -> None:
    result = api_cli("Start-Backup", "web01:/srv", "-Wait")
    assert result.code == 0, result.err
    assert "State   : succeeded" in result.out
    assert result.err == ""  # stderr is not a terminal: no progress line


def test_get_recovery_point(api: FakeApi, api_cli: Cli) -> None:
    result = api_cli("Get-RecoveryPoint", "-DataSource", "web01:/srv", "-Json")
    assert result.code == 0, result.err
    assert [p["id"] for p in result.json()] == ["rp-aaa1", "rp-aaa2", "rp-b"]
    assert api.last("GET", "/recovery-points").query == {"data_source": "ds-web-srv"}
    table = api_cli("Get-RecoveryPoint", "-Tier", "disk")
    assert "rp-b     web01:/srv" in table.out and "5.0 GiB" in table.out


def test_cloud_tier_is_asked_of_the_server(api: FakeApi, api_cli: Cli) -> None:
    result = api_cli("Get-RecoveryPoint", "-Tier", "Cloud", "-Json")
    assert result.code == 0, result.err
    assert api.last("GET", "/recovery-points").query == {"tier": "cloud"}


def test_get_recoverable_item(api: FakeApi, api_cli: Cli) -> None:
    result = api_cli("Get-RecoverableItem", "-RecoveryPoint", "rp-b", "-Path", "srv")
    assert result.code == 0, result.err
    assert "drwxr-xr-x" in result.out and "2.0 KiB" in result.out and "srv/notes.txt" in result.out
    assert api.last("GET", "/recovery-points/rp-b/items").query == {"path": "srv"}


def test_ambiguous_recovery_point_prefix(api_cli: Cli) -> None:
    result = api_cli("Get-RecoverableItem", "-RecoveryPoint", "rp-aaa", "-Json")
    assert (result.code, result.out) == (2, "")
    assert "recovery point 'rp-aaa' is ambiguous; candidates: rp-aaa1" in result.err
    assert "rp-aaa2" in result.err


def test_latest_recovery_point_of_a_data_source(api: FakeApi, api_cli: Cli) -> None:
    result = api_cli("Get-RecoverableItem", "-RecoveryPoint", "latest", "-DataSource", "web01:/srv")
    assert result.code == 0, result.err
    api.last("GET", "/recovery-points/rp-b/items")


# ----------------------------------------------------------------------- restore


def test_start_restore_defaults_to_rename(api: FakeApi, api_cli: Cli) -> None:
    result = api_cli(
        "Start-Restore", "-RecoveryPoint", "rp-aaa2", "-Item", "srv/www,srv/notes.txt",
        "-TargetAgent", "db01", "-TargetPath", "/tmp/restore", "-Wait", "-Json",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert result.json()["state"] == "succeeded"
    assert api.last("POST", "/jobs/restore").body == {
        "rp_id": "rp-aaa2",
        "items": ["srv/www", "srv/notes.txt"],
        "conflict": "rename",
        "target_agent": "ag-db01",
        "target_path": "/tmp/restore",
    }


def test_start_restore_whole_rp_with_overwrite(api: FakeApi, api_cli: Cli) -> None:
    result = api_cli("Start-Restore", "-RecoveryPoint", "rp-b", "-Overwrite")
    assert result.code == 0, result.err
    assert api.last("POST", "/jobs/restore").body == {
        "rp_id": "rp-b",
        "items": [],
        "conflict": "overwrite",
    }
    assert "Wait-Job -Id" in result.err


# ----------------------------------------------------------------------- jobs


def test_wait_job_failed_is_exit_1(api_cli: Cli) -> None:
    result = api_cli("Wait-Job", "-Id", "101")
    assert result.code == 1
    assert "State   : failed" in result.out
    assert "Error   : agent web01 went offline" in result.out


def test_wait_job_succeeded_is_exit_0_json(api_cli: Cli) -> None:
    result = api_cli("wait-job", "102", "-Json")
    assert result.code == 0
    assert result.json()["state"] == "succeeded"


def test_wait_job_timeout_is_exit_1(api_cli: Cli) -> None:
    result = api_cli("Wait-Job", "-Id", "103", "-Timeout", "0")
    assert (result.code, result.out) == (1, "")
    assert result.err == (
        "stockade: Wait-Job: job 103 is still running after 0 s "
        "(it keeps running; Stop-Job -Id 103 cancels it)\n"
    )


def test_get_job_filters(api: FakeApi, api_cli: Cli) -> None:
    result = api_cli("Get-Job", "-State", "failed", "-Agent", "web01", "-Limit", "5", "-Json")
    assert result.code == 0, result.err
    assert [j["id"] for j in result.json()] == ["101"]
    assert api.last("GET", "/jobs").query == {"state": "failed", "agent": "ag-web01", "limit": "5"}
    one = api_cli("Get-Job", "-Id", "102", "-Json")
    assert [j["id"] for j in one.json()] == ["102"]  # a list even for one job
    table = api_cli("Get-Job")
    assert table.out.splitlines()[0].split()[:3] == ["Id", "Kind", "State"]


def test_unknown_job_is_exit_2(api_cli: Cli) -> None:
    result = api_cli("Get-Job", "-Id", "999")
    assert (result.code, result.err) == (2, "stockade: Get-Job: no job '999'\n")


def test_stop_job(api_cli: Cli) -> None:
    result = api_cli("Stop-Job", "-Id", "103", "-Json")
    assert result.code == 0, result.err
    assert result.json()["state"] == "cancelled"
    assert api_cli("Wait-Job", "103").code == 1  # cancelled counts as not succeeded
    again = api_cli("Stop-Job", "-Id", "103")
    assert again.code == 1
    assert "POST /jobs/103/cancel failed (409): job 103 has already ended" in again.err


# ----------------------------------------------------------------------- TLS


def test_tls_with_the_servers_ca(cli: Cli, tmp_path: Path) -> None:
    from server.tls import load_or_create_tls  # noqa: PLC0415 (only this test needs cryptography)

    material = load_or_create_tls(tmp_path / "tls")
    with running_fake_api(material.server_ssl_context()) as api:
        trusted = cli("Get-Agent", "-Json", "-Server", api.url, "-Token", TOKEN,
                      "-CaFile", str(material.ca_cert))  # fmt: skip
        assert trusted.code == 0, trusted.err
        untrusted = cli("Get-Agent", "-Json", "-Server", api.url, "-Token", TOKEN)
        assert (untrusted.code, untrusted.out) == (3, "")
        assert f"cannot reach {api.url}: TLS certificate not trusted" in untrusted.err


def test_progress_line_on_a_terminal(api: FakeApi) -> None:
    """-Wait draws a self-overwriting progress line on stderr when it is a terminal."""
    import pty  # noqa: PLC0415 (POSIX only, this test only)

    master, slave = pty.openpty()
    env = {**os.environ, "STOCKADE_CLI_CONFIG": "/nonexistent/cli.toml", "COLUMNS": "120"}
    try:
        result = subprocess.run(
            [str(STOCKADE), "Start-Backup", "web01:/srv", "-Wait",
             "-Server", api.url, "-Token", TOKEN],
            stdout=subprocess.PIPE,
            stderr=slave,
            stdin=subprocess.DEVNULL,
            env=env,
            timeout=60,
            check=False,
        )  # fmt: skip
        os.close(slave)
        slave = -1
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal has no writer left
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    assert result.returncode == 0
    assert b"State   : succeeded" in result.stdout
    text = seen.decode()
    assert "\r\x1b[K| job 201 queued: 12 files, 3.0 MiB, 1.0 KiB/s  /srv/www/index.html" in text
    assert "job 201 running" in text
    assert text.endswith("\r\x1b[K")  # the line is cleared before the result is printed
