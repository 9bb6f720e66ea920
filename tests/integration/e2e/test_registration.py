"""Agent registration with one-time tokens, and per-file problems as job warnings."""

from __future__ import annotations

from pathlib import Path

from tests.support.stack import AgentProc, Stack


def test_token_is_single_use(stack: Stack) -> None:
    """Expiry is tested against the catalog with a fake clock (tests/unit/server)."""
    token = stack.cli("New-AgentToken", "-Json", check=True).json()["token"]
    first = AgentProc(stack.server, stack.base / "a1", "one")
    assert first.register(token).returncode == 0
    again = AgentProc(stack.server, stack.base / "a2", "two").register(token)
    assert again.returncode == 1
    assert "used" in (again.stderr + again.stdout).lower(), again
    bogus = AgentProc(stack.server, stack.base / "a3", "three").register("not-a-token")
    assert bogus.returncode == 1
    assert "not known" in bogus.stderr, bogus
    # Nothing was saved for the refused registrations.
    assert not (stack.base / "a2" / "identity.json").exists()
    names = [a["name"] for a in stack.cli("Get-Agent", "-Json", check=True).json()]
    assert names == ["one"]


def test_per_file_problems_end_as_warnings_not_failure(stack: Stack, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.txt").write_text("fine")
    stack.add_agent("alpha")
    ds = stack.add_files_source("alpha", [src, tmp_path / "does-not-exist"])
    job = stack.backup(ds["id"])
    assert job["state"] == "succeeded_with_warnings", job
    assert job["warnings"] >= 1
    samples = (job.get("result") or {}).get("warning_samples") or []
    assert any("does-not-exist" in w for w in samples), job
    rps = stack.recovery_points(ds["id"])
    assert len(rps) == 1 and rps[0]["files"] == 1
