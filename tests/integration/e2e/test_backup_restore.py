"""Backup and restore end to end: real server, its managed Mosquitto, agents and the CLI."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.stack import Stack
from tests.support.tree_compare import Compare, assert_same_tree
from tests.unit.agent.sample_tree import build_rich_tree


def restored(target: Path, source: Path) -> Path:
    """Where a restore to `target` puts `source` (data source paths are absolute)."""
    return target / str(source).lstrip("/")


def test_backup_then_restore_every_file_type(stack: Stack, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    xattrs = build_rich_tree(src)
    stack.add_agent("alpha")
    ds = stack.add_files_source("alpha", [src])

    job = stack.backup(ds["id"])
    assert job["state"] == "succeeded", job
    rps = stack.recovery_points(ds["id"])
    assert len(rps) == 1
    assert rps[0]["files"] >= 10

    target = tmp_path / "restore"
    res = stack.cli(
        "Start-Restore",
        "-RecoveryPoint",
        rps[0]["id"],
        "-TargetPath",
        str(target),
        "-Wait",
        "-Json",
    )
    assert res.code == 0, (res.out, res.err, stack.server.tail())
    assert_same_tree(src, restored(target, src), Compare(xattrs=xattrs))

    # Unchanged re-backup: a second RP that reads no file again.
    job2 = stack.backup(ds["id"])
    assert job2["state"] == "succeeded", job2
    stats = (job2.get("result") or {}).get("stats") or {}
    assert stats.get("bytes_read", 0) == 0, stats
    assert len(stack.recovery_points(ds["id"])) == 2


def test_item_level_restore_and_browse(stack: Stack, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "keep" / "inner").mkdir(parents=True)
    (src / "keep" / "inner" / "a.txt").write_bytes(b"a" * 1000)
    (src / "keep" / "b.txt").write_bytes(b"b" * 2000)
    (src / "other.txt").write_bytes(b"o" * 10)
    stack.add_agent("alpha")
    ds = stack.add_files_source("alpha", [src])
    assert stack.backup(ds["id"])["state"] == "succeeded"
    rp = stack.recovery_points(ds["id"])[0]["id"]

    items = stack.cli(
        "Get-RecoverableItem", "-RecoveryPoint", rp, "-Path", str(src), "-Json", check=True
    ).json()
    names = sorted(os.path.basename(i["path"]) for i in items)
    assert names == ["keep", "other.txt"]

    target = tmp_path / "restore"
    stack.cli(
        "Start-Restore",
        "-RecoveryPoint",
        rp,
        "-Item",
        str(src / "keep" / "inner"),
        "-TargetPath",
        str(target),
        "-Wait",
        check=True,
    )
    out = restored(target, src)
    assert (out / "keep" / "inner" / "a.txt").read_bytes() == b"a" * 1000
    assert not (out / "keep" / "b.txt").exists()
    assert not (out / "other.txt").exists()


def test_restore_conflicts_skip_overwrite_rename(stack: Stack, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_bytes(b"backed up")
    stack.add_agent("alpha")
    ds = stack.add_files_source("alpha", [src])
    assert stack.backup(ds["id"])["state"] == "succeeded"
    rp = stack.recovery_points(ds["id"])[0]["id"]
    (src / "f.txt").write_bytes(b"changed since")

    def restore(mode: str) -> None:
        stack.cli("Start-Restore", "-RecoveryPoint", rp, mode, "-Wait", check=True)

    restore("-Skip")  # original location
    assert (src / "f.txt").read_bytes() == b"changed since"
    restore("-Rename")
    assert (src / "f.txt").read_bytes() == b"changed since"
    copies = [p for p in src.iterdir() if p.name != "f.txt"]
    assert [c.read_bytes() for c in copies] == [b"backed up"], copies
    restore("-Overwrite")
    assert (src / "f.txt").read_bytes() == b"backed up"


def test_cross_agent_restore(stack: Stack, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "data.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (src / "note").write_text("from alpha")
    stack.add_agent("alpha")
    stack.add_agent("beta")
    ds = stack.add_files_source("alpha", [src])
    assert stack.backup(ds["id"])["state"] == "succeeded"
    rp = stack.recovery_points(ds["id"])[0]["id"]
    target = tmp_path / "on-beta"
    stack.cli(
        "Start-Restore",
        "-RecoveryPoint",
        rp,
        "-TargetAgent",
        "beta",
        "-TargetPath",
        str(target),
        "-Wait",
        check=True,
    )
    jobs = stack.cli("Get-Job", "-Json", check=True).json()
    restore_jobs = [j for j in jobs if j["kind"] == "restore"]
    beta_id = next(a["id"] for a in stack.cli("Get-Agent", "-Json").json() if a["name"] == "beta")
    assert restore_jobs[0]["agent_id"] == beta_id
    assert_same_tree(src, restored(target, src))
