"""``stockade-agent register`` against a real TLS server: TOFU, --ca-file, refused tokens."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from agent.config import load_identity
from agent.registration import ca_fingerprint
from server.tls import load_or_create_tls
from tests.integration.agent.fake_dataplane import REGISTER_TOKEN, FakeDataPlane

REPO = Path(__file__).resolve().parents[3]


async def run_register(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "agent.daemon", "register", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_trust_on_first_use_pins_and_prints_fingerprint(
    dataplane: FakeDataPlane, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    result = await run_register(
        "--server", dataplane.url, "--token", REGISTER_TOKEN, "--state-dir", str(state)
    )
    assert result.returncode == 0, result.stderr
    assert ca_fingerprint(dataplane.ca_pem) in result.stdout
    assert "trusted on first use" in result.stdout
    assert "warning" not in result.stderr  # the pinned CA verifies the server
    identity = load_identity(state / "identity.json")
    assert identity.agent_id == "agent1"
    assert identity.ca_pem == dataplane.ca_pem
    assert (state / "identity.json").stat().st_mode & 0o077 == 0
    assert dataplane.registered[0]["token"] == REGISTER_TOKEN


async def test_ca_file_is_checked_before_the_token_is_sent(
    dataplane: FakeDataPlane, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(load_or_create_tls(tmp_path / "other").ca_pem)
    result = await run_register(
        "--server",
        dataplane.url,
        "--token",
        REGISTER_TOKEN,
        "--ca-file",
        str(other),
        "--state-dir",
        str(tmp_path / "s1"),
    )
    assert result.returncode == 1
    assert "not trusted" in result.stderr
    assert dataplane.registered == []  # the token never left the agent

    good = tmp_path / "ca.pem"
    good.write_text(dataplane.ca_pem)
    result = await run_register(
        "--server",
        dataplane.url,
        "--token",
        REGISTER_TOKEN,
        "--ca-file",
        str(good),
        "--state-dir",
        str(tmp_path / "s2"),
    )
    assert result.returncode == 0, result.stderr
    assert "matches --ca-file" in result.stdout


async def test_refused_token_shows_server_error(dataplane: FakeDataPlane, tmp_path: Path) -> None:
    result = await run_register(
        "--server", dataplane.url, "--token", "bogus", "--state-dir", str(tmp_path / "s")
    )
    assert result.returncode == 1
    assert "refused the token: unknown, used or expired registration token" in result.stderr
    assert not (tmp_path / "s" / "identity.json").exists()
