"""Hostile, damaged or misused input: the pool refuses it, says what and where, and
keeps everything else working."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from storage_pool import (
    SAFETY_NONE,
    ChunkId,
    EncodedChunk,
    Entry,
    EntryType,
    IntegrityError,
    ManifestError,
    PoolBusyError,
    PoolConfigError,
    PoolVersionError,
    SessionError,
    StoragePool,
    chunk_id_of,
    encode_chunk,
)
from storage_pool.manifest import entry_from_wire, iter_entries
from tests.unit.pool.file_backup import backup_files, entries_of, read_back
from tests.unit.pool.pool_opener import PoolOpener

# -------------------------------------------------------------------------- opening


async def test_newer_format_version_is_refused(pools: PoolOpener) -> None:
    """Guards against an old Stockade misreading or damaging a pool written by a newer
    one: the error must tell the operator to upgrade."""
    await (await pools.create()).close()
    config = pools.path() / "config.json"
    doc = json.loads(config.read_bytes())
    doc["format_version"] = 2
    config.write_text(json.dumps(doc))
    with pytest.raises(PoolVersionError, match="upgrade Stockade") as info:
        await pools.open()
    assert isinstance(info.value, PoolConfigError)
    assert info.value.path == config


async def test_directory_that_is_not_a_pool_is_refused(tmp_path: Path, pools: PoolOpener) -> None:
    """Guards against opening (and writing a lock and index into) any directory, and
    against creating a pool over existing files."""
    stranger = pools.path("stranger")
    stranger.mkdir()
    (stranger / "photo.jpg").write_bytes(b"not a pool")
    with pytest.raises(PoolConfigError, match="not a storage pool"):
        await pools.open("stranger")
    with pytest.raises(PoolConfigError, match="not empty"):
        await pools.create("stranger")
    assert sorted(p.name for p in stranger.iterdir()) == ["photo.jpg"]


async def test_second_open_of_the_same_pool_is_refused(pools: PoolOpener) -> None:
    """Guards the single-process rule: a second open while the pool is held must fail with
    PoolBusyError naming the holder, and leave the first opener working."""
    pool = await pools.create()
    with pytest.raises(PoolBusyError, match=r"in use by another process \(pid \d+"):
        await pools.open()
    rp, _, _ = await backup_files(pool, "ds", {b"f": b"still works"})
    await pool.close()
    again = await pools.open()
    assert await read_back(again, rp) == {b"f": b"still works"}


# -------------------------------------------------------------------------- sessions


async def test_put_with_verify_refuses_content_that_does_not_match_its_id(
    pool: StoragePool,
) -> None:
    """Guards against storing a chunk under a name its content does not hash to (it would
    poison every later backup that dedups against it); nothing of the batch is stored."""
    good = encode_chunk(b"an honest chunk" * 100, 3)
    claimed = chunk_id_of(b"what the uploader claims")
    forged = EncodedChunk(id=claimed, frame=good.frame, size=good.size)
    async with pool.session("ds") as session:
        with pytest.raises(IntegrityError, match=claimed.hex()):
            await session.put([good, forged], verify=True)
        assert sorted(await session.missing([good.id, claimed])) == sorted([good.id, claimed])
    assert not pool.store.path_of(claimed).exists()
    assert (await pool.stats()).chunk_count == 0


async def test_entries_must_reference_chunks_the_session_knows(pool: StoragePool) -> None:
    """Guards against committing a manifest that points at chunks the pool may not hold:
    a chunk must be stored by, or confirmed present to, this very session."""
    _, _, entries = await backup_files(pool, "other", {b"f": b"stored by another session"})
    stored = entries[0].chunk_ids[0]
    never = chunk_id_of(b"never stored")

    def file_of(cid: ChunkId) -> Entry:
        return Entry(b"f", EntryType.FILE, size=25, chunk_ids=(cid,), chunk_sizes=(25,))

    async with pool.session("ds") as session:
        with pytest.raises(SessionError, match=never.hex()):
            await session.add_entries([file_of(never)])
    async with pool.session("ds") as session:
        with pytest.raises(SessionError, match=stored.hex()):
            await session.add_entries([file_of(stored)])
    async with pool.session("ds") as session:
        assert await session.missing([stored]) == []
        await session.add_entries([file_of(stored)])
        rp = await session.commit()
    assert await read_back(pool, rp) == {b"f": b"stored by another session"}


OUT_OF_ORDER = {
    "reversed": [b"b", b"a"],
    "duplicate": [b"a", b"a"],
    "child first": [b"a/x", b"a"],
    "children reversed": [b"a", b"a/y", b"a/x"],
    "dir after its sibling": [b"a.txt", b"a"],
}


async def test_out_of_order_entries_are_refused(pool: StoragePool) -> None:
    """Guards the manifest order (depth-first, names sorted bytewise) that restore and
    incremental backups rely on: a violation is a SessionError naming the entry."""
    for case, paths in OUT_OF_ORDER.items():
        async with pool.session("ds") as session:
            with pytest.raises(SessionError, match="out of order") as info:
                await session.add_entries([Entry(p, EntryType.DIR) for p in paths])
            assert repr(paths[-1]) in str(info.value), case
    assert await pool.list_recovery_points() == []


async def test_depth_first_order_is_accepted_where_raw_bytes_disagree(pool: StoragePool) -> None:
    """Guards against the manifest writer checking raw path order while the session checks
    depth-first order: `a/x` comes before `a.txt` (name `a` sorts first) although '/' sorts
    after '.'. The session's own rule must be the only rule."""
    paths = [b"a", b"a/x", b"a-b", b"a.txt"]
    assert paths == sorted(paths, key=lambda p: p.split(b"/"))
    async with pool.session("ds") as session:
        await session.add_entries([Entry(p, EntryType.DIR) for p in paths])
        rp = await session.commit()
    assert [e.path for e in await entries_of(pool, rp)] == paths


SESSION_HOSTILE = {
    "absolute path": Entry(b"/etc/passwd", EntryType.DIR),
    "dot-dot path": Entry(b"a/../../x", EntryType.DIR),
    "symlink without target": Entry(b"l", EntryType.SYMLINK),
    "file size without chunks": Entry(b"f", EntryType.FILE, size=100),
    "hole outside the file": Entry(b"f", EntryType.FILE, holes=((0, 10),)),
    "xattr name with NUL": Entry(b"f", EntryType.FILE, xattrs=((b"user.a\0b", b"v"),)),
    "dir with a link target": Entry(b"d", EntryType.DIR, link_target=b"x"),
}


async def test_session_refuses_entries_no_reader_could_decode(pool: StoragePool) -> None:
    """Guards against committing a recovery point that can never be read: an entry the
    manifest decoder refuses must be refused by add_entries, as a SessionError (a
    PoolError callers can handle). Committed, such an RP silently loses that backup and
    stops GC of the whole pool (GcAbortedError) until an operator deletes it."""
    wrong: list[str] = []
    for case, entry in SESSION_HOSTILE.items():
        try:
            async with pool.session("ds") as session:
                await session.add_entries([entry])
                await session.commit()
        except SessionError:
            continue
        except Exception as err:  # collected and reported below
            wrong.append(f"{case}: raised {type(err).__name__}: {err}")
        else:
            wrong.append(f"{case}: committed")
    assert wrong == [], "\n".join(wrong)
    assert await pool.list_recovery_points() == []
    await pool.gc(SAFETY_NONE)


# -------------------------------------------------------------------------- manifests

ID = chunk_id_of(b"x")
VALID: dict[str, Any] = {"p": b"dir/file", "t": "f", "s": 10, "c": ID + ID, "cs": [4, 6]}
HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    ("absolute path", {"p": b"/etc/passwd"}, "absolute"),
    ("dot-dot", {"p": b"a/../../etc/passwd"}, r"'\.\.' component"),
    ("dot", {"p": b"a/./b"}, r"'\.' component"),
    ("empty component", {"p": b"a//b"}, "'empty' component"),
    ("empty path", {"p": b""}, "empty or too long"),
    ("NUL in path", {"p": b"a\0b"}, "NUL"),
    ("path not bytes", {"p": "dir/file"}, "path must be bytes"),
    ("sizes do not add up", {"cs": [4, 5]}, "add up to 9 bytes, the entry says 10"),
    ("size without chunks", {"c": b"", "cs": []}, "the entry says 10"),
    ("fewer sizes than ids", {"cs": [10]}, "do not match the chunk ids"),
    ("zero chunk size", {"s": 6, "cs": [0, 6]}, "do not match the chunk ids"),
    ("torn chunk id", {"c": ID + ID[:5]}, "malformed"),
    ("symlink without target", {"t": "l", "c": b"", "cs": [], "s": 0}, "every symlink"),
    ("file with a target", {"l": b"elsewhere"}, "only symlinks"),
    ("dir with chunks", {"t": "d"}, "cannot carry chunks"),
    ("unknown type", {"t": "z"}, "unknown entry type"),
    ("negative size", {"s": -1}, "'s' must be an integer >= 0"),
    ("bool as size", {"s": True}, "'s' must be an integer"),
    ("hole past the end", {"o": [[8, 5]]}, "lie outside the file"),
    ("xattr with NUL", {"x": [[b"user.a\0b", b"v"]]}, "xattr name"),
]


def test_valid_wire_entry_decodes() -> None:
    """The baseline the hostile cases below alter one field of."""
    entry = entry_from_wire(dict(VALID))
    assert (entry.path, entry.size, entry.chunk_sizes) == (b"dir/file", 10, (4, 6))


@pytest.mark.parametrize(
    ("change", "message"), [pytest.param(c, m, id=case) for case, c, m in HOSTILE]
)
def test_hostile_manifest_entry_is_refused(change: dict[str, Any], message: str) -> None:
    """Guards restore against a forged or damaged manifest: paths that escape the target,
    chunk lists that do not describe the file, inconsistent types are refused, with the
    reason, by entry_from_wire and, naming the recovery point and entry, by iter_entries."""
    doc = {**VALID, **change}
    with pytest.raises(ValueError, match=message):
        entry_from_wire(doc)
    stream = b"".join(
        msgpack.packb(obj, use_bin_type=True)
        for obj in ({"stockade_manifest": 1}, dict(VALID), doc, {"end": 2})
    )
    with pytest.raises(
        ManifestError, match=rf"^manifest of recovery point X: entry 1: .*{message}"
    ):
        list(iter_entries([stream[:7], stream[7:]], "recovery point X"))


def test_manifest_stream_structure_is_checked() -> None:
    """Guards against a truncated manifest, a wrong trailer count or trailing data being
    taken as a complete (shorter) recovery point."""

    def pack(*objs: Any) -> bytes:
        return b"".join(msgpack.packb(o, use_bin_type=True) for o in objs)

    header = {"stockade_manifest": 1}
    cases = {
        "truncated after 1 entries": pack(header, VALID),
        "trailer counts 2 entries, found 1": pack(header, VALID, {"end": 2}),
        "data after the manifest trailer": pack(header, VALID, {"end": 1}, VALID),
        "unknown manifest header": pack({"stockade_manifest": 99}, VALID, {"end": 1}),
    }
    for message, stream in cases.items():
        with pytest.raises(ManifestError, match=message):
            list(iter_entries([stream], "rp"))
