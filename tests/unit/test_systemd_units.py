"""systemd/*.service: lint with `systemd-analyze verify`, and the settings the daemons rely on.

`systemd-analyze verify` reports unknown keys and bad values as warnings with exit code 0,
so any stderr output fails the lint. verify also wants the ExecStart= binary to exist: each
unit is copied to tmp with ExecStart= pointing at this interpreter, everything else kept.
Skipped without systemd-analyze, except with CI=true (then it fails).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = {
    "stockade-server.service": "/usr/local/bin/stockade-server --config /etc/stockade/server.toml",
    "stockade-agent.service": "/usr/local/bin/stockade-agent --config /etc/stockade/agent.toml",
}
EX_CONFIG = 78


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        message = "systemd-analyze not found (apt-get install systemd)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true, so this is a failure")
        pytest.skip(message)
    return path


def _settings(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value in order (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            current = sections.setdefault(stripped[1:-1], {})
            continue
        key, sep, value = stripped.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _lint(unit_text: str, name: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    lines = [
        f"ExecStart={sys.executable} -c pass" if line.startswith("ExecStart=") else line
        for line in unit_text.splitlines()
    ]
    copy = tmp_path / name
    copy.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return subprocess.run(
        [_systemd_analyze(), "verify", str(copy)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_passes_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    result = _lint((ROOT / "systemd" / name).read_text(encoding="utf-8"), name, tmp_path)
    assert (result.returncode, result.stderr, result.stdout) == (0, "", ""), (
        f"systemd-analyze verify {name}:\n{result.stderr}{result.stdout}"
    )


def test_lint_catches_unknown_key(tmp_path: Path) -> None:
    """Guards against a lint that never fails: verify only warns (exit 0) on a bad key."""
    text = (ROOT / "systemd" / "stockade-server.service").read_text(encoding="utf-8")
    result = _lint(
        text.replace("[Service]\n", "[Service]\nProtectEverything=yes\n"), "x.service", tmp_path
    )
    assert "ProtectEverything" in result.stderr


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_settings_the_daemons_rely_on(name: str) -> None:
    service = _settings((ROOT / "systemd" / name).read_text(encoding="utf-8"))["Service"]
    single = {key: values[-1] for key, values in service.items()}
    assert single["ExecStart"] == UNITS[name]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "60",
        "Restart": "on-failure",
        "RestartSec": "5",
        "RestartPreventExitStatus": str(EX_CONFIG),
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectControlGroups": "yes",
    }
    assert {key: single.get(key) for key in expected} == expected


def test_server_unit_sandbox() -> None:
    service = _settings((ROOT / "systemd" / "stockade-server.service").read_text("utf-8"))[
        "Service"
    ]
    single = {key: values[-1] for key, values in service.items()}
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "read-only",
        "PrivateTmp": "yes",
        "StateDirectory": "stockade",
        "ReadWritePaths": "/var/lib/stockade",
    }
    assert {key: single.get(key) for key in expected} == expected


def test_agent_unit_keeps_the_real_file_system() -> None:
    """The agent restores anywhere: a read-only or private view of the file system (or
    stripped setuid bits) would break restores; see the unit's header comment."""
    service = _settings((ROOT / "systemd" / "stockade-agent.service").read_text("utf-8"))["Service"]
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "RestrictSUIDSGID", "PrivateDevices"):
        assert key not in service, f"{key}= would break restores"
    caps = set(service["CapabilityBoundingSet"][-1].split())
    assert {"CAP_DAC_READ_SEARCH", "CAP_DAC_OVERRIDE", "CAP_CHOWN", "CAP_FOWNER"} <= caps
    assert "CAP_SYS_ADMIN" not in caps
    assert service["StateDirectory"] == ["stockade-agent"]
