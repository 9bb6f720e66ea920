"""The agent's files cache: round trip, per-source replace, and recovery from damage."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from agent.files_cache import FilesCache
from storage_pool import ChunkId, Entry, EntryType


def file_entry(path: bytes, n_chunks: int = 2, *, inode: int = 42) -> Entry:
    return Entry(
        path=path,
        type=EntryType.FILE,
        mode=0o644,
        size=100 * n_chunks,
        mtime_ns=1_700_000_000_000_000_001,
        ctime_ns=1_700_000_000_000_000_002,
        inode=inode,
        chunk_ids=tuple(ChunkId(bytes([i]) * 32) for i in range(n_chunks)),
        chunk_sizes=(100,) * n_chunks,
        holes=((0, 50),) if n_chunks else (),
    )


def cached_fields(e: Entry) -> tuple[object, ...]:
    return (e.path, e.size, e.mtime_ns, e.ctime_ns, e.inode, e.chunk_ids, e.chunk_sizes, e.holes)


def test_replace_then_load_round_trips_per_data_source(tmp_path: Path) -> None:
    """Guards the cache contents: each data source has its own files and RP id, a
    replace swaps the whole set (gone paths disappear), and only regular files with
    chunks are kept; 64-bit inode numbers survive SQLite's signed integers."""
    path = tmp_path / "state" / "files-cache.sqlite"
    with FilesCache.open(path) as cache:
        assert cache.load("ds-a") == (None, {})
        big_inode = (1 << 64) - 5
        first = [file_entry(b"etc/passwd"), file_entry(b"etc/odd\xff", inode=big_inode)]
        other = [
            file_entry(b"home/x"),
            Entry(path=b"home", type=EntryType.DIR),
            Entry(path=b"home/empty", type=EntryType.FILE),
        ]
        assert cache.replace("ds-a", "20250101T000000Z-aaaaaaaa", first) == 2
        assert cache.replace("ds-b", "20250101T000000Z-bbbbbbbb", other) == 1
    with FilesCache.open(path) as cache:
        rp, files = cache.load("ds-a")
        assert rp == "20250101T000000Z-aaaaaaaa"
        assert {p: cached_fields(e) for p, e in files.items()} == {
            e.path: cached_fields(e) for e in first
        }
        assert files[b"etc/odd\xff"].inode == big_inode
        assert set(cache.load("ds-b")[1]) == {b"home/x"}

        cache.replace("ds-a", "20250102T000000Z-cccccccc", [file_entry(b"etc/group")])
        rp, files = cache.load("ds-a")
        assert (rp, set(files)) == ("20250102T000000Z-cccccccc", {b"etc/group"})
        cache.forget("ds-b")
        assert cache.load("ds-b") == (None, {})


def test_a_file_that_is_not_a_database_is_moved_aside(tmp_path: Path) -> None:
    """Guards the promise that a damaged cache never fails a backup: garbage in place of
    the SQLite file is moved aside with a warning and the cache starts empty."""
    path = tmp_path / "files-cache.sqlite"
    path.write_bytes(b"this is not sqlite at all" * 200)
    with capture_logs() as logs, FilesCache.open(path) as cache:
        assert cache.load("ds") == (None, {})
        cache.replace("ds", "20250101T000000Z-aaaaaaaa", [file_entry(b"a")])
        assert set(cache.load("ds")[1]) == {b"a"}
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["files_cache_corrupt"]
    aside = list(tmp_path.glob("files-cache.sqlite.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not sqlite")


def test_damaged_pages_are_detected_and_rebuilt(tmp_path: Path) -> None:
    """Guards damage inside a real cache file (a torn or overwritten page): loading it
    yields an empty cache and a warning, not an exception, and the cache works again."""
    path = tmp_path / "files-cache.sqlite"
    with FilesCache.open(path) as cache:
        many = [file_entry(f"dir/file-{i:05}".encode(), 3) for i in range(3000)]
        cache.replace("ds", "20250101T000000Z-aaaaaaaa", many)
    raw = bytearray(path.read_bytes())
    assert len(raw) > 64 * 1024
    page = 4096
    for start in range(page, len(raw), 3 * page):  # every third page after the header
        raw[start : start + page] = b"\xa5" * page
    path.write_bytes(bytes(raw))

    with capture_logs() as logs:
        cache = FilesCache.open(path)
        try:
            rp, files = cache.load("ds")
            assert (rp, files) == (None, {})
            cache.replace("ds", "20250101T000000Z-bbbbbbbb", [file_entry(b"again")])
            assert cache.load("ds")[0] == "20250101T000000Z-bbbbbbbb"
        finally:
            cache.close()
    assert "files_cache_corrupt" in [e["event"] for e in logs]
    assert list(tmp_path.glob("files-cache.sqlite.corrupt-*"))
