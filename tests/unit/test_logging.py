"""server.logging.configure_logging: JSON lines off a terminal, console renderer on one.

Each case runs in a fresh interpreter so the test process's own logging stays untouched
and stdout really is (or is not) a terminal.
"""

import json
import os
import pty
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from server.logging import configure_logging

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import logging
import structlog
from server.logging import configure_logging

configure_logging("info")
configure_logging("info")  # idempotent: must not double every line
log = structlog.get_logger()
with structlog.contextvars.bound_contextvars(job_id="job-1", agent_id="web01"):
    log.info("chunk_stored", size=3)
log.debug("hidden_below_level")
logging.getLogger("aiohttp.access").warning("GET %s", "/metrics")
try:
    raise RuntimeError("boom")
except RuntimeError:
    log.exception("job_crashed")
"""


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def test_json_lines_when_stdout_is_not_a_tty() -> None:
    result = _run(SCRIPT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in events] == ["chunk_stored", "GET /metrics", "job_crashed"]

    stored, foreign, crashed = events
    assert stored["level"] == "info"
    assert stored["size"] == 3
    assert (stored["job_id"], stored["agent_id"]) == ("job-1", "web01")
    assert "job_id" not in foreign  # contextvars were unbound after the block
    assert (foreign["level"], foreign["logger"]) == ("warning", "aiohttp.access")
    assert crashed["level"] == "error"
    assert crashed["exception"][0]["exc_type"] == "RuntimeError"

    for event in events:
        stamp = datetime.fromisoformat(event["timestamp"])
        assert stamp.utcoffset() is not None
        assert stamp.utcoffset() == UTC.utcoffset(None)


def test_console_renderer_when_stdout_is_a_tty() -> None:
    script = (
        "import structlog\n"
        "from server.logging import configure_logging\n"
        "configure_logging('info')\n"
        "structlog.get_logger().info('chunk_stored', size=3)\n"
    )
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-W", "error", "-c", script],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=terminal,
            stderr=subprocess.PIPE,
            env={**os.environ, "NO_COLOR": "1"},
        )
        os.close(terminal)
        terminal = -1
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        _, stderr = proc.communicate(timeout=60)
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)
    output = b"".join(chunks).decode()
    assert proc.returncode == 0, stderr
    assert "chunk_stored" in output
    assert "size" in output
    with pytest.raises(json.JSONDecodeError):
        json.loads(output.splitlines()[0])


def test_unknown_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("loud")
