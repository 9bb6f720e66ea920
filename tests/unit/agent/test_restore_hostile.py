"""Hostile and corrupt manifests: nothing is ever written outside the restore target.

Each test hands the restorer Entry lists built by hand (what a malicious server or a
corrupt manifest could send), and checks a sentinel directory beside the target and the
report, which must name every refused entry. The chunk data comes from memory (verified
by id like any fetcher's): the subject here is the manifest, not the chunk store.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.restore import TMP_PREFIX, RestoreOptions, RestoreReport, restore
from storage_pool import ChunkId, Entry, EntryType, chunk_id_of
from tests.support.tree_compare import files_named
from tests.unit.agent.chunk_source import MemoryChunkFetcher, aiter_of

EVIL = b"evil data"


@pytest.fixture
def evil_chunk() -> ChunkId:
    return chunk_id_of(EVIL)


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    d = tmp_path / "sentinel"
    d.mkdir()
    (d / "keep").write_bytes(b"untouched")
    return d


def evil_file(path: bytes, cid: ChunkId, **kw: object) -> Entry:
    return Entry(
        path=path,
        type=EntryType.FILE,
        mode=0o644,
        size=len(EVIL),
        chunk_ids=(cid,),
        chunk_sizes=(len(EVIL),),
        **kw,  # type: ignore[arg-type]
    )


def symlink(path: bytes, target: bytes) -> Entry:
    return Entry(path=path, type=EntryType.SYMLINK, mode=0o777, link_target=target)


async def run(entries: Sequence[Entry], target: Path, **options: object) -> RestoreReport:
    return await restore(
        aiter_of(entries),
        MemoryChunkFetcher([EVIL]),
        RestoreOptions(target=target, **options),  # type: ignore[arg-type]
    )


def assert_untouched(sentinel: Path, tmp_path: Path, target: Path) -> None:
    assert sorted(os.listdir(sentinel)) == ["keep"]
    assert (sentinel / "keep").read_bytes() == b"untouched"
    assert os.stat(sentinel / "keep").st_nlink == 1
    assert sorted(os.listdir(tmp_path)) == ["sentinel", target.name]
    assert files_named(target, TMP_PREFIX) == []


def refused(report: RestoreReport) -> dict[bytes, str]:
    return {w.path: w.message for w in report.warnings if w.refused}


async def test_unsafe_paths_are_refused(
    tmp_path: Path, evil_chunk: ChunkId, sentinel: Path
) -> None:
    """Guards against path traversal by '..', absolute paths, empty, '.' and NUL
    components: each entry is refused and named, the safe entry after them is restored."""
    target = tmp_path / "target"
    bad = [
        b"../escape",
        b"a/../../escape",
        os.fsencode(sentinel) + b"/abs",
        b"",
        b"./dot",
        b"a//b",
        b"nul\0name",
    ]
    entries = [evil_file(p, evil_chunk) for p in bad] + [evil_file(b"fine", evil_chunk)]
    report = await run(entries, target)
    assert set(refused(report)) == set(bad)
    assert (report.files, report.refused, report.failed) == (1, len(bad), len(bad))
    assert sorted(os.listdir(target)) == ["fine"]
    assert_untouched(sentinel, tmp_path, target)


@pytest.mark.parametrize("link", ["absolute", "relative"])
async def test_symlinked_parent_from_the_manifest_is_not_followed(
    tmp_path: Path, evil_chunk: ChunkId, sentinel: Path, link: str
) -> None:
    """Guards against the classic archive attack: a symlink `a -> /somewhere`, then a
    file `a/x`. The symlink is restored (it is data), `a/x` and `a/d` are refused."""
    target = tmp_path / "target"
    dest = os.fsencode(sentinel) if link == "absolute" else b"../sentinel"
    entries = [
        symlink(b"a", dest),
        Entry(path=b"a/d", type=EntryType.DIR, mode=0o755),
        evil_file(b"a/d/y", evil_chunk),
        evil_file(b"a/x", evil_chunk),
    ]
    report = await run(entries, target)
    assert os.readlink(target / "a") == os.fsdecode(dest)
    assert set(refused(report)) == {b"a/d", b"a/d/y", b"a/x"}
    assert "symlink" in refused(report)[b"a/x"]
    assert_untouched(sentinel, tmp_path, target)


async def test_existing_symlink_in_the_target_is_not_followed(
    tmp_path: Path, evil_chunk: ChunkId, sentinel: Path
) -> None:
    """A symlink already in the target where the manifest puts a directory: an implied
    parent is refused; a directory entry replaces the symlink itself (overwrite) or is
    skipped (skip); in neither case is anything written through it."""
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(sentinel, target / "pre")
    os.symlink(sentinel, target / "pre2")
    report = await run([evil_file(b"pre/x", evil_chunk)], target)
    assert set(refused(report)) == {b"pre/x"}
    assert_untouched(sentinel, tmp_path, target)

    # Only the item is selected: `pre2` is an implied parent, and a symlink on disk.
    entries = [
        Entry(path=b"pre2", type=EntryType.DIR, mode=0o755),
        evil_file(b"pre2/x", evil_chunk),
    ]
    report = await run(entries, target, items=[b"pre2/x"])
    assert set(refused(report)) == {b"pre2", b"pre2/x"}
    assert_untouched(sentinel, tmp_path, target)

    entries = [Entry(path=b"pre", type=EntryType.DIR, mode=0o755), evil_file(b"pre/y", evil_chunk)]
    report = await run(entries, target, conflict="skip")
    assert (report.skipped, report.warnings) == (2, [])
    assert (target / "pre").is_symlink()
    assert_untouched(sentinel, tmp_path, target)

    report = await run(entries, target, conflict="overwrite")
    assert report.warnings == []
    assert not (target / "pre").is_symlink()
    assert (target / "pre" / "y").read_bytes() == EVIL
    assert_untouched(sentinel, tmp_path, target)


async def test_a_file_standing_where_a_parent_goes_fails_without_refusal(
    tmp_path: Path, evil_chunk: ChunkId
) -> None:
    """A plain file in the way is a conflict, not an attack: failed, not refused."""
    target = tmp_path / "target"
    target.mkdir()
    (target / "f").write_bytes(b"mine")
    report = await run([evil_file(b"f/x", evil_chunk)], target)
    assert [(w.path, w.refused) for w in report.warnings] == [(b"f/x", False)]
    assert "not a directory" in report.warnings[0].message
    assert (target / "f").read_bytes() == b"mine"


async def test_hardlinks_only_reach_earlier_entries_inside_the_target(
    tmp_path: Path, evil_chunk: ChunkId, sentinel: Path
) -> None:
    """A hardlink group whose first entry lies outside the target, or under a symlinked
    directory, links nothing; a member of a group never seen carries no data and is
    refused; nothing in the sentinel gains a link."""
    target = tmp_path / "target"
    outside = os.fsencode(sentinel) + b"/keep"
    entries = [
        evil_file(b"../sentinel/keep", evil_chunk, hardlink_group=1),
        symlink(b"evil", os.fsencode(sentinel)),
        evil_file(b"evil/keep", evil_chunk, hardlink_group=2),
        Entry(path=b"l1", type=EntryType.FILE, size=len(EVIL), hardlink_group=1),
        Entry(path=b"l2", type=EntryType.FILE, size=len(EVIL), hardlink_group=2),
        Entry(path=b"l3", type=EntryType.FILE, size=len(EVIL), hardlink_group=3),
        Entry(path=outside[1:], type=EntryType.FILE, size=len(EVIL), hardlink_group=1),
    ]
    report = await run(entries, target)
    assert set(refused(report)) == {
        b"../sentinel/keep",
        b"evil/keep",
        b"l1",
        b"l3",
        outside[1:],
    }
    assert "refused" in refused(report)[b"l1"]
    assert "add up to 0 bytes" in refused(report)[b"l3"]
    # l2's first link was planned but never written (its parent is a symlink).
    assert [w.path for w in report.warnings if not w.refused] == [b"l2"]
    assert sorted(os.listdir(target)) == ["evil"]
    assert_untouched(sentinel, tmp_path, target)


async def test_inconsistent_sizes_and_order_are_refused(
    tmp_path: Path, evil_chunk: ChunkId, sentinel: Path
) -> None:
    """Chunk sizes that do not add up to the size, a chunk longer than the manifest says,
    entries out of order or repeated: each refused or failed by name, nothing partial."""
    target = tmp_path / "target"
    entries = [
        Entry(
            path=b"b_short",
            type=EntryType.FILE,
            size=100,
            chunk_ids=(evil_chunk,),
            chunk_sizes=(len(EVIL),),
        ),
        Entry(
            path=b"c_lies", type=EntryType.FILE, size=4, chunk_ids=(evil_chunk,), chunk_sizes=(4,)
        ),
        evil_file(b"d_ok", evil_chunk),
        evil_file(b"a_late", evil_chunk),
        evil_file(b"d_ok", evil_chunk),
        evil_file(b"e_missing", chunk_id_of(b"never stored")),
    ]
    report = await run(entries, target)
    messages = {w.path: (w.refused, w.message) for w in report.warnings}
    assert messages[b"b_short"] == (True, "its chunks add up to 9 bytes, the entry says 100")
    assert messages[b"c_lies"][0] is False and "holds 9 bytes" in messages[b"c_lies"][1]
    assert messages[b"a_late"][0] is True and "order" in messages[b"a_late"][1]
    assert messages[b"e_missing"][0] is False and "missing" in messages[b"e_missing"][1]
    assert len(report.warnings) == 5  # the second d_ok too
    assert sorted(os.listdir(target)) == ["d_ok"]
    assert_untouched(sentinel, tmp_path, target)


async def test_metadata_problems_are_warnings_not_failures(
    tmp_path: Path, evil_chunk: ChunkId
) -> None:
    """A user.* xattr cannot live on a symlink (EPERM on Linux): the symlink is restored
    and the report says which xattr was dropped."""
    target = tmp_path / "target"
    entries = [
        Entry(
            path=b"s",
            type=EntryType.SYMLINK,
            link_target=b"x",
            xattrs=((b"user.note", b"v"),),
            mtime_ns=1_000_000_007,
        )
    ]
    report = await run(entries, target)
    assert report.symlinks == 1 and report.failed == 0
    assert [w.path for w in report.warnings] == [b"s"]
    assert "cannot set xattr user.note" in report.warnings[0].message
    assert os.lstat(target / "s").st_mtime_ns == 1_000_000_007
