"""ingest_tree: backing up a real local tree, its metadata, and incremental backups."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import replace
from pathlib import Path

from storage_pool import Entry, EntryType, StoragePool
from storage_pool.ingest import ingest_tree
from tests.unit.pool.file_backup import entries_of, read_entry, tree_key
from tests.unit.pool.sample_data import KiB, MiB, random_bytes, text_bytes, write_file

SPARSE_SIZE = 20 * 1000 * 1000
ODD_NAME = b"caf\xe9-\xff.bin"  # not UTF-8
MTIME_NS = 1_600_000_000_123_456_789

TYPES = {
    stat.S_IFREG: EntryType.FILE,
    stat.S_IFDIR: EntryType.DIR,
    stat.S_IFLNK: EntryType.SYMLINK,
    stat.S_IFIFO: EntryType.FIFO,
}


def build_special_tree(root: Path) -> bool:
    """Every kind of object ingest handles; returns whether the filesystem took the xattr."""
    regular = write_file(root / "regular.txt", text_bytes(300 * KiB, seed=1), mode=0o640)
    write_file(root / "random.bin", random_bytes(3 * MiB, seed=2))
    write_file(root / "empty", b"")
    with open(root / "sparse", "wb") as f:
        f.seek(MiB)
        f.write(b"data" * 1024)
        f.truncate(SPARSE_SIZE)
    write_file(root / "hl_a", random_bytes(600 * KiB, seed=3))
    write_file(root / "sub" / "deeper" / "deepest" / "leaf", b"leaf")
    os.link(root / "hl_a", root / "sub" / "hl_b")
    os.symlink("regular.txt", root / "link")
    os.symlink("../nowhere", root / "sub" / "dangling")
    os.mkfifo(root / "pipe")
    write_file(Path(os.fsdecode(os.fsencode(root) + b"/" + ODD_NAME)), b"odd name")
    os.utime(regular, ns=(MTIME_NS, MTIME_NS))
    (root / "sub" / "deeper").chmod(0o750)
    try:
        os.setxattr(regular, "user.k", b"v")
    except OSError as err:
        if err.errno != errno.ENOTSUP:
            raise
        return False
    return True


def tree_paths(root: Path) -> set[bytes]:
    """Every object below `root`, as manifest paths."""
    base = os.fsencode(root)
    out: set[bytes] = set()
    for top, dirs, files in os.walk(base):
        rel = os.path.relpath(top, base)
        for name in dirs + files:
            out.add(name if rel == b"." else rel + b"/" + name)
    return out


def lstat_of(root: Path, path: bytes) -> os.stat_result:
    return os.lstat(os.fsencode(root) + b"/" + path)


def content_of(root: Path, path: bytes) -> bytes:
    with open(os.fsencode(root) + b"/" + path, "rb") as f:
        return f.read()


async def test_ingest_records_every_kind_of_object(tmp_path: Path, pool: StoragePool) -> None:
    """Guards the reference producer: every object of a tree (regular, empty, sparse,
    hardlinked, symlinked, fifo, nested, non-UTF-8 name) is in the manifest in order, with
    its metadata as lstat reports it, and every file reads back byte for byte."""
    root = tmp_path / "tree"
    root.mkdir()
    xattr_ok = build_special_tree(root)
    rp, st = await ingest_tree(pool, "host:/tree", root, workers=2)
    entries = await entries_of(pool, rp)
    by_path = {e.path: e for e in entries}

    assert st.warnings == []
    assert [e.path for e in entries] == sorted(by_path, key=tree_key)
    assert set(by_path) == tree_paths(root)
    assert rp.entries == len(entries)
    assert st.files == rp.files == sum(e.type is EntryType.FILE for e in entries) == 8
    assert (st.dirs, st.other) == (3, 3)
    for path, entry in by_path.items():
        check_metadata(root, path, entry)
        if entry.type is EntryType.FILE:
            data_entry = await pool.find_entry(rp, path)
            assert await read_entry(pool, data_entry) == content_of(root, path), path

    assert by_path[b"regular.txt"].mtime_ns == MTIME_NS
    assert by_path[b"regular.txt"].mode == 0o640
    assert by_path[b"sub/deeper"].mode == 0o750
    assert by_path[b"link"].link_target == b"regular.txt"
    assert by_path[b"sub/dangling"].link_target == b"../nowhere"
    assert by_path[b"empty"].chunk_ids == ()
    assert by_path[ODD_NAME].size == len(b"odd name")

    primary, secondary = by_path[b"hl_a"], by_path[b"sub/hl_b"]
    assert primary.hardlink_group is not None
    assert secondary.hardlink_group == primary.hardlink_group
    assert primary.chunk_ids and not secondary.chunk_ids
    others = [e for p, e in by_path.items() if p not in (b"hl_a", b"sub/hl_b")]
    assert all(e.hardlink_group is None for e in others)

    sparse = by_path[b"sparse"]
    assert sparse.size == SPARSE_SIZE
    assert sparse.holes, "the sparse file's holes were not recorded"
    assert all(off >= 0 and off + n <= SPARSE_SIZE for off, n in sparse.holes)
    assert all(off + n <= MiB or off >= MiB + 4096 for off, n in sparse.holes)

    if xattr_ok:  # only this assertion depends on the filesystem
        assert (b"user.k", b"v") in by_path[b"regular.txt"].xattrs
    assert (await pool.verify()).clean

    # Unchanged, the same tree is not read again and yields the same manifest (but atimes).
    rp2, st2 = await ingest_tree(pool, "host:/tree", root, workers=2)
    assert (st2.bytes_read, st2.unchanged_files, st2.warnings) == (0, 6, [])
    again = await entries_of(pool, rp2)
    assert [replace(e, atime_ns=0) for e in again] == [replace(e, atime_ns=0) for e in entries]


def check_metadata(root: Path, path: bytes, entry: Entry) -> None:
    lst = lstat_of(root, path)
    assert entry.type is TYPES[stat.S_IFMT(lst.st_mode)], path
    assert entry.mode == stat.S_IMODE(lst.st_mode), path
    assert entry.mtime_ns == lst.st_mtime_ns, path
    assert (entry.uid, entry.gid, entry.inode) == (lst.st_uid, lst.st_gid, lst.st_ino), path
    if entry.type is EntryType.FILE:
        assert entry.size == lst.st_size, path
        if entry.chunk_ids:
            assert sum(entry.chunk_sizes) == entry.size, path
    else:
        assert entry.chunk_ids == (), path
    if entry.type is EntryType.SYMLINK:
        assert entry.link_target == os.readlink(os.fsencode(root) + b"/" + path), path
    else:
        assert entry.link_target is None, path


def build_plain_tree(root: Path) -> dict[bytes, bytes]:
    files = {
        f"d{i % 3}/sub{i % 2}/f{i:02}".encode(): text_bytes(5 * KiB + i, seed=i) for i in range(30)
    }
    files[b"big.bin"] = random_bytes(12 * MiB, seed=100)
    files[b"d0/empty"] = b""
    for path, data in files.items():
        write_file(root / os.fsdecode(path), data)
    return files


async def test_incremental_ingest_reads_only_changed_files(
    tmp_path: Path, pool: StoragePool
) -> None:
    """Guards incremental backups: with nothing changed, no file is read again (the
    parent's chunks are reused); after one file changes, only that file is read, and
    both recovery points read back as they were."""
    root = tmp_path / "tree"
    files = build_plain_tree(root)
    with_data = sum(1 for d in files.values() if d)
    rp1, st1 = await ingest_tree(pool, "ds", root, workers=2)
    assert (st1.bytes_read, st1.unchanged_files) == (sum(map(len, files.values())), 0)

    rp2, st2 = await ingest_tree(pool, "ds", root, workers=2)
    assert rp2.parent == rp1.id
    assert st2.bytes_read == 0
    assert st2.unchanged_files == with_data
    assert st2.new_stored_bytes < 64 * KiB  # at most a new manifest chunk

    changed = root / "d1" / "sub1" / "f07"
    changed_data = files[b"d1/sub1/f07"] + b" and a new line\n"
    changed.write_bytes(changed_data)
    rp3, st3 = await ingest_tree(pool, "ds", root, workers=2)
    assert rp3.parent == rp2.id
    assert st3.bytes_read == len(changed_data)
    assert st3.unchanged_files == with_data - 1

    new = {e.path: e for e in await entries_of(pool, rp3)}
    assert await read_entry(pool, new[b"d1/sub1/f07"]) == changed_data
    assert await read_entry(pool, new[b"big.bin"]) == files[b"big.bin"]
    old = {e.path: e for e in await entries_of(pool, rp1)}
    assert await read_entry(pool, old[b"d1/sub1/f07"]) == files[b"d1/sub1/f07"]


async def test_incremental_ingest_does_not_reread_hardlinked_files(
    tmp_path: Path, pool: StoragePool
) -> None:
    """Guards ingest.py's promise to read only files that changed since the parent: a
    hardlinked file that did not change must be reused like any other, not re-read (and
    re-hashed) on every backup."""
    root = tmp_path / "tree"
    write_file(root / "plain", random_bytes(MiB, seed=110))
    write_file(root / "linked", random_bytes(2 * MiB, seed=111))
    os.link(root / "linked", root / "linked-too")
    await ingest_tree(pool, "ds", root, workers=2)
    rp, st = await ingest_tree(pool, "ds", root, workers=2)
    assert st.bytes_read == 0, f"re-read {st.bytes_read} bytes of an unchanged tree"
    assert st.unchanged_files == 2
    linked = await pool.find_entry(rp, b"linked-too")
    assert await read_entry(pool, linked) == (root / "linked").read_bytes()


async def test_ingest_accepts_siblings_sorting_between_a_dir_and_its_children(
    tmp_path: Path, pool: StoragePool
) -> None:
    """Guards the manifest order: depth-first with names compared bytewise puts `a/x`
    before `a.txt` and `a-b` (the name `a` sorts first), although the raw path `a/x`
    sorts after them ('/' is 0x2f). Such trees are everywhere (`src/` beside `src.zip`)
    and must back up."""
    root = tmp_path / "tree"
    files = {b"a/x": b"in a", b"a-b": b"dash", b"a.txt": b"dot", b"a0": b"zero"}
    for path, data in files.items():
        write_file(root / os.fsdecode(path), data)
    rp, st = await ingest_tree(pool, "ds", root, workers=2)
    assert st.warnings == []
    entries = await entries_of(pool, rp)
    assert [e.path for e in entries] == [b"a", b"a/x", b"a-b", b"a.txt", b"a0"]
    for e in entries:
        if e.type is EntryType.FILE:
            assert await read_entry(pool, e) == files[e.path]
