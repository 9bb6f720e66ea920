"""The console scripts installed by `make setup`, and agent.protocol's topic helper."""

import os
import re
import subprocess
import sysconfig
from importlib.metadata import version
from pathlib import Path

import pytest

from agent.protocol import TOPIC_PREFIX, topic
from server.cli.main import CMDLETS

SCRIPTS = Path(sysconfig.get_path("scripts"))
VERSION = version("stockade")


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = SCRIPTS / name
    assert path.is_file(), f"{path} is missing: run `make setup` (pip install -e '.[dev]')"
    return subprocess.run(
        [str(path), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("script", ["stockade", "stockade-server", "stockade-agent"])
def test_version(script: str) -> None:
    result = run_script(script, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{script} {VERSION}"


def test_cli_version_powershell_style() -> None:
    result = run_script("stockade", "-Version")
    assert (result.returncode, result.stdout.strip()) == (0, f"stockade {VERSION}")


@pytest.mark.parametrize("args", [(), ("help",), ("--help",)])
def test_cli_help_lists_every_cmdlet(args: tuple[str, ...]) -> None:
    result = run_script("stockade", *args)
    assert result.returncode == 0, result.stderr
    listed = set(re.findall(r"^  ([A-Z][a-z]+-[A-Za-z]+) ", result.stdout, flags=re.MULTILINE))
    assert listed == {c.name for c in CMDLETS}
    assert "Get-CloudConnection" in listed
    assert "New-SecurityPin" in listed
    # CLI.md's table plus New-DataSource, Remove-DataSource and Unregister-Vault
    assert len(CMDLETS) == 29


def test_cli_help_for_one_cmdlet() -> None:
    result = run_script("stockade", "help", "get-recoverypoint")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Get-RecoveryPoint: ")


@pytest.mark.parametrize("name", ["Start-GarbageCollection", "START-GARBAGECOLLECTION"])
def test_cli_known_cmdlet_not_available_yet(name: str) -> None:
    result = run_script("stockade", name, "-Detailed")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert "not available yet in this version" in lines[0]


@pytest.mark.parametrize("args", [("Frobnicate-Thing",), ("help", "No-Such")])
def test_cli_unknown_cmdlet_is_bad_usage(args: tuple[str, ...]) -> None:
    result = run_script("stockade", *args)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "unknown cmdlet" in result.stderr


def test_cli_reader_closing_the_pipe_is_quiet() -> None:
    """Guards against a BrokenPipeError traceback on `stockade help | head -1`."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the CLI writes anything
    try:
        result = subprocess.run(
            [str(SCRIPTS / "stockade"), "help"],
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert result.stderr == b""
    assert result.returncode == 1


@pytest.mark.parametrize("script", ["stockade-server", "stockade-agent"])
def test_daemon_help(script: str) -> None:
    result = run_script(script, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: {script}" in result.stdout
    assert "--log-level" in result.stdout


def test_server_bad_config_exits_78() -> None:
    """78 (EX_CONFIG) is what the unit's RestartPreventExitStatus= stops restarting on."""
    result = run_script("stockade-server", "--set", "http.port=0")
    assert result.returncode == 78
    assert "http.port" in result.stderr


def test_agent_unregistered_exits_78(tmp_path: Path) -> None:
    result = run_script("stockade-agent", "run", "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 78
    assert "not registered" in result.stderr


@pytest.mark.parametrize("script", ["stockade-server", "stockade-agent"])
def test_daemon_bad_option_is_usage_error(script: str) -> None:
    result = run_script(script, "--no-such-option")
    assert result.returncode == 2
    assert "unrecognized arguments" in result.stderr


@pytest.mark.parametrize("kind", ["cmd", "events", "state"])
def test_topic(kind: str) -> None:
    assert topic("web01", kind) == f"stockade/v1/agents/web01/{kind}"
    assert topic("web01", kind).startswith(TOPIC_PREFIX + "/")


def test_topic_accepts_full_id_alphabet_and_length() -> None:
    agent_id = "A-z_0" + "9" * 59
    assert len(agent_id) == 64
    assert topic(agent_id, "cmd") == f"{TOPIC_PREFIX}/{agent_id}/cmd"


@pytest.mark.parametrize(
    "agent_id",
    [
        "",
        "#",
        "+",
        "/",
        "web/01",
        "web+",
        "web#",
        "a" * 65,
        "web 01",
        "web01\n",
        "wéb01",
        "web01\x00",
        "..",
    ],
)
def test_topic_rejects_bad_agent_id(agent_id: str) -> None:
    """Wildcards or separators in an id would widen subscriptions and ACLs (CVE-2017-7650)."""
    with pytest.raises(ValueError, match="invalid agent id"):
        topic(agent_id, "cmd")


@pytest.mark.parametrize("kind", ["", "CMD", "event", "#", "+", "cmd/x", "state "])
def test_topic_rejects_bad_kind(kind: str) -> None:
    with pytest.raises(ValueError, match="invalid topic kind"):
        topic("web01", kind)
