"""The server daemon's life: sd_notify, SIGTERM during a backup, SIGHUP, a lost catalog."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from tests.integration.e2e.test_kills import interrupted_backup
from tests.support.stack import ServerProc, Stack
from tests.support.tree_compare import assert_same_tree


def test_sd_notify_ready_and_stopping(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    stack = Stack(tmp_path, ServerProc(tmp_path))
    stack.server.env = {"NOTIFY_SOCKET": str(sock_path)}
    try:
        stack.server.start()
        got = sock.recv(4096).decode()
        assert "READY=1" in got.splitlines(), got
        assert stack.server.stop() == 0
        seen = []
        while "STOPPING=1" not in seen:
            seen += sock.recv(4096).decode().splitlines()
    finally:
        stack.close()
        sock.close()


def test_sigterm_during_backup_leaves_nothing_half_visible(stack: Stack, tmp_path: Path) -> None:
    _, ds_id, job_id = interrupted_backup(stack, tmp_path)
    assert stack.server.stop(signal.SIGTERM) == 0
    stack.server.start()
    job = stack.job(job_id)
    assert job["state"] == "failed" and "shut down" in (job["error"] or ""), job
    assert stack.recovery_points(ds_id) == []
    stack.wait_agent_online("alpha")
    assert stack.backup(ds_id)["state"] == "succeeded"


def test_sighup_reloads_live_keys(tmp_path: Path) -> None:
    conf = tmp_path / "server.toml"
    conf.write_text("[jobs]\nmax_concurrent_backups = 2\n")
    stack = Stack(tmp_path, ServerProc(tmp_path))
    stack.server.extra = ["--config", str(conf)]
    try:
        stack.server.start()
        conf.write_text("[jobs]\nmax_concurrent_backups = 3\n[http]\nport = 1\n")
        assert stack.server.proc is not None
        os.kill(stack.server.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            reloads = [e for e in stack.server.log_events() if e.get("event") == "config_reloaded"]
            if reloads:
                break
            time.sleep(0.2)
        assert reloads, stack.server.tail()
        assert reloads[0]["applied"] == ["jobs.max_concurrent_backups"]
        # http.port needs a restart: reported, not applied (the --set override still wins).
        status, _ = stack.server.api("GET", "/api/v1/health")
        assert status == 200
    finally:
        stack.close()


def test_lost_catalog_is_rebuilt_from_the_pool(stack: Stack, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("kept in the pool")
    stack.add_agent("alpha")
    ds = stack.add_files_source("alpha", [src])
    assert stack.backup(ds["id"])["state"] == "succeeded"
    rp = stack.recovery_points(ds["id"])[0]
    stack.agents["alpha"].stop()
    assert stack.server.stop() == 0
    for p in stack.server.data_dir.glob("catalog.sqlite*"):
        p.unlink()
    stack.server.start()
    rebuilt = stack.recovery_points(ds["id"])
    assert [r["id"] for r in rebuilt] == [rp["id"]]
    agents = stack.cli("Get-Agent", "-Json", check=True).json()
    assert [(a["name"], a["needs_registration"]) for a in agents] == [("alpha", True)]
    # The old agent's credential died with the catalog; a newly registered agent restores.
    stack.add_agent("beta")
    target = tmp_path / "out"
    stack.cli(
        "Start-Restore",
        "-RecoveryPoint",
        rp["id"],
        "-TargetAgent",
        "beta",
        "-TargetPath",
        str(target),
        "-Wait",
        check=True,
    )
    assert_same_tree(src, target / str(src).lstrip("/"))
