"""Item-level restores and the conflict modes, against a real pool and real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.restore import TMP_PREFIX, RestoreOptions, RestoreReport, restore
from storage_pool import RecoveryPoint, StoragePool
from storage_pool.ingest import ingest_tree
from tests.support.tree_compare import Compare, compare_trees, files_named, snapshot
from tests.unit.agent.chunk_source import PoolChunkFetcher
from tests.unit.agent.sample_tree import build_rich_tree

IS_ROOT = os.geteuid() == 0


@pytest.fixture
async def backed_up(tmp_path: Path, pool: StoragePool) -> tuple[Path, RecoveryPoint]:
    source = tmp_path / "source"
    source.mkdir()
    build_rich_tree(source)
    rp, _ = await ingest_tree(pool, "host:/tree", source)
    return source, rp


async def run_restore(
    pool: StoragePool, rp: RecoveryPoint, target: Path, **options: object
) -> RestoreReport:
    return await restore(
        pool.iter_entries(rp),
        PoolChunkFetcher(pool),
        RestoreOptions(target=target, **options),  # type: ignore[arg-type]
    )


def subset(nodes: dict[bytes, object], *keep: bytes) -> dict[bytes, object]:
    return {p: n for p, n in nodes.items() if p in keep}


async def test_item_restore_of_one_file_creates_its_parents(
    tmp_path: Path, pool: StoragePool, backed_up: tuple[Path, RecoveryPoint]
) -> None:
    """Restoring one deep file restores only it, and makes its parent directories with
    their recorded metadata (sub/deeper keeps mode 0o750 and its mtime)."""
    source, rp = backed_up
    target = tmp_path / "one_file"
    report = await run_restore(pool, rp, target, items=[b"/sub/deeper/deepest/leaf"])
    assert report.warnings == []
    assert (report.files, report.dirs) == (1, 3)
    want = [b"sub", b"sub/deeper", b"sub/deeper/deepest", b"sub/deeper/deepest/leaf"]
    got = snapshot(target)
    assert sorted(got) == want
    assert (
        compare_trees(
            {p: n for p, n in snapshot(source).items() if p in want}, got, Compare(owner=IS_ROOT)
        )
        == []
    )


async def test_item_restore_of_a_subdirectory_restores_its_subtree(
    tmp_path: Path, pool: StoragePool, backed_up: tuple[Path, RecoveryPoint]
) -> None:
    """A directory item brings its whole subtree, including a hardlink whose group's first
    entry (hl_a) is outside the selection: the first selected member carries the data."""
    source, rp = backed_up
    target = tmp_path / "subdir"
    report = await run_restore(pool, rp, target, items=[b"sub/deeper", b"not/there"])
    assert [(w.path, w.message) for w in report.warnings] == [
        (b"not/there", "not in the recovery point")
    ]
    expected = {
        p: n for p, n in snapshot(source).items() if p == b"sub" or p.startswith(b"sub/deeper")
    }
    got = snapshot(target)
    # Only one link of the hl_a inode is restored, so it is a plain file here.
    assert got[b"sub/deeper/hl_c"].sha256 == expected[b"sub/deeper/hl_c"].sha256
    assert compare_trees(expected, got, Compare(owner=IS_ROOT, hardlinks=False)) == []


async def test_item_restore_with_existing_parents_leaves_them_alone(
    tmp_path: Path, pool: StoragePool, backed_up: tuple[Path, RecoveryPoint]
) -> None:
    """Parents of an item that already exist keep their own mode and are not given the
    recorded metadata, even in overwrite mode: only the selected item is the restore's to
    change (adding the file moves the directory's mtime, as any new file would)."""
    source, rp = backed_up
    target = tmp_path / "existing"
    (target / "sub" / "deeper").mkdir(parents=True)
    os.chmod(target / "sub" / "deeper", 0o700)
    os.utime(target / "sub" / "deeper", ns=(5, 5))
    await run_restore(pool, rp, target, items=[b"sub/deeper/notes.md"], conflict="overwrite")
    st = os.stat(target / "sub" / "deeper")
    assert st.st_mode & 0o7777 == 0o700
    assert st.st_mtime_ns != os.stat(source / "sub" / "deeper").st_mtime_ns
    assert (target / "sub" / "deeper" / "notes.md").is_file()


def _seed_conflicts(target: Path) -> None:
    """A target where restored names are already taken, by files and by a directory."""
    target.mkdir()
    (target / "regular.txt").write_bytes(b"local edit")
    (target / "empty").mkdir()  # a directory where the backup has a file
    (target / "sub").write_bytes(b"a file where the backup has a directory")
    (target / "private").write_bytes(b"also local")


async def test_conflict_overwrite_replaces_files(
    tmp_path: Path, pool: StoragePool, backed_up: tuple[Path, RecoveryPoint]
) -> None:
    source, rp = backed_up
    target = tmp_path / "overwrite"
    _seed_conflicts(target)
    report = await run_restore(pool, rp, target, conflict="overwrite")
    # A directory is never replaced by a file; a file standing where a directory goes is.
    assert [(w.path, w.message) for w in report.warnings] == [
        (b"empty", "a directory stands at its name; not replaced")
    ]
    assert (target / "regular.txt").read_bytes() == (source / "regular.txt").read_bytes()
    diff = compare_trees(snapshot(source), snapshot(target), Compare(owner=IS_ROOT))
    assert diff[0] == f"{b'empty'!r}: kind 'file' != 'dir'"
    assert all(d.startswith(f"{b'empty'!r}: ") for d in diff), diff


async def test_conflict_skip_keeps_what_is_there(
    tmp_path: Path, pool: StoragePool, backed_up: tuple[Path, RecoveryPoint]
) -> None:
    source, rp = backed_up
    target = tmp_path / "skip"
    _seed_conflicts(target)
    report = await run_restore(pool, rp, target, conflict="skip")
    assert report.warnings == []
    assert (target / "regular.txt").read_bytes() == b"local edit"
    assert (target / "private").read_bytes() == b"also local"
    assert (target / "sub").read_bytes().startswith(b"a file")
    assert (target / "random.bin").read_bytes() == (source / "random.bin").read_bytes()
    # regular.txt, empty, private, sub and the 14 objects below sub.
    below_sub = sum(1 for p in snapshot(source) if p.startswith(b"sub/"))
    assert report.skipped == 4 + below_sub
    assert files_named(target, TMP_PREFIX) == []


async def test_conflict_rename_restores_beside_with_the_extension_kept(
    tmp_path: Path, pool: StoragePool, backed_up: tuple[Path, RecoveryPoint]
) -> None:
    source, rp = backed_up
    target = tmp_path / "rename"
    _seed_conflicts(target)
    report = await run_restore(pool, rp, target, conflict="rename")
    assert report.warnings == []
    assert report.renamed == 4
    original = (source / "regular.txt").read_bytes()
    assert (target / "regular.txt").read_bytes() == b"local edit"
    assert (target / "regular.restored-1.txt").read_bytes() == original
    assert (target / "private.restored-1").read_bytes() == (source / "private").read_bytes()
    assert (target / "empty.restored-1").read_bytes() == b""
    assert (target / "sub.restored-1" / "deeper" / "deepest" / "leaf").read_bytes() == b"leaf"
    # Again: the next free number.
    report = await run_restore(pool, rp, target, items=[b"regular.txt"], conflict="rename")
    assert report.renamed == 1
    assert (target / "regular.restored-2.txt").read_bytes() == original
