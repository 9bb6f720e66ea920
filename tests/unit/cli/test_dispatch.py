"""Dispatch, help and usage errors of ``stockade`` without a server (server/cli/main.py)."""

import re
import subprocess
import sysconfig
from pathlib import Path

import pytest

from server.cli.catalog import CMDLETS
from tests.unit.cli.conftest import Cli

STOCKADE = Path(sysconfig.get_path("scripts")) / "stockade"


def test_help_lists_every_cmdlet_once(cli: Cli) -> None:
    result = cli("help")
    assert result.code == 0 and result.err == ""
    listed = re.findall(r"^  ([A-Z][a-z]+-[A-Za-z]+) ", result.out, flags=re.MULTILINE)
    assert listed == [c.name for c in CMDLETS]
    assert "Exit codes: 0 success" in result.out


@pytest.mark.parametrize("spelling", ["Start-Restore", "start-restore", "START-RESTORE"])
def test_help_for_one_cmdlet_lists_its_parameters(cli: Cli, spelling: str) -> None:
    result = cli("help", spelling)
    assert result.code == 0
    assert result.out.startswith("Start-Restore: ")
    for flag in ("-RecoveryPoint", "-Item", "-TargetAgent", "-Overwrite", "-Skip", "-Rename"):
        assert flag in result.out
    assert "-Json" in result.out and "Examples:" in result.out


def test_question_mark_after_a_cmdlet_gives_its_help(cli: Cli) -> None:
    result = cli("wait-job", "-?")
    assert result.code == 0 and result.out.startswith("Wait-Job: ")


def test_unknown_cmdlet_suggests_the_closest(cli: Cli) -> None:
    result = cli("Get-Agnet")
    assert (result.code, result.out) == (2, "")
    assert result.err == "stockade: unknown cmdlet 'Get-Agnet'; did you mean Get-Agent?\n"


def test_unknown_parameter_is_usage_error_before_any_connection(cli: Cli) -> None:
    result = cli("Get-Job", "-Stat", "failed")
    assert (result.code, result.out) == (2, "")
    assert result.err == "stockade: Get-Job: unknown parameter -Stat; did you mean -State?\n"


def test_missing_required_parameter(cli: Cli) -> None:
    result = cli("Remove-DataSource", "-DeleteData")
    assert result.code == 2
    assert result.err == "stockade: Remove-DataSource needs -DataSource\n"


def test_no_server_configured_is_usage_error(cli: Cli) -> None:
    result = cli("Get-Agent")
    assert result.code == 2
    assert "no server: pass -Server URL or set STOCKADE_SERVER" in result.err
    assert len(result.err.splitlines()) == 1


def test_conflicting_restore_switches_fail_before_any_connection(cli: Cli) -> None:
    result = cli("Start-Restore", "-RecoveryPoint", "rp-b", "-Skip", "-Overwrite")
    assert result.code == 2
    assert "give at most one of -Overwrite, -Skip, -Rename" in result.err


def test_cmdlet_not_delivered_yet(cli: Cli) -> None:
    result = cli("start-garbagecollection", "-Json")
    assert result.code == 2
    assert "Start-GarbageCollection is not available yet in this version" in result.err


def test_help_as_a_subprocess() -> None:
    assert STOCKADE.is_file(), f"{STOCKADE} is missing: run `make setup`"
    result = subprocess.run(
        [str(STOCKADE), "help", "get-job"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Get-Job: list jobs")
    assert "-State <string>" in result.stdout
