"""Backing up and reading back in-memory files through the public session API.

This drives the pool the way a remote agent does (chunk, put, add entries, commit),
without the local-tree ingest; tests compare what they wrote with what they read.
"""

from __future__ import annotations

from collections.abc import Mapping

from storage_pool import Entry, EntryType, RecoveryPoint, StoragePool, chunk_id_of
from storage_pool.session import SessionStats

MTIME_NS = 1_700_000_000_123_456_789


def tree_key(path: bytes) -> list[bytes]:
    """The manifest order: depth-first, names sorted bytewise."""
    return path.split(b"/")


def file_entries(files: Mapping[bytes, list[bytes]]) -> list[Entry]:
    """Entries for files given as their chunks, plus every directory above them, in
    manifest order."""
    dirs: set[bytes] = set()
    for path in files:
        parts = path.split(b"/")
        dirs.update(b"/".join(parts[:i]) for i in range(1, len(parts)))
    entries = [Entry(path=d, type=EntryType.DIR, mode=0o755, mtime_ns=MTIME_NS) for d in dirs]
    for path, pieces in files.items():
        entries.append(
            Entry(
                path=path,
                type=EntryType.FILE,
                mode=0o644,
                mtime_ns=MTIME_NS,
                size=sum(len(p) for p in pieces),
                chunk_ids=tuple(chunk_id_of(p) for p in pieces),
                chunk_sizes=tuple(len(p) for p in pieces),
            )
        )
    entries.sort(key=lambda e: tree_key(e.path))
    return entries


async def backup_files(
    pool: StoragePool, data_source: str, files: Mapping[bytes, bytes]
) -> tuple[RecoveryPoint, SessionStats, list[Entry]]:
    """Store `files` as one committed recovery point; return it, the session's stats and
    the entries as they were added."""
    chunker = pool.new_chunker()
    chunked = {path: [bytes(v) for v in chunker.cut(data)] for path, data in files.items()}
    entries = file_entries(chunked)
    async with pool.session(data_source) as session:
        for pieces in chunked.values():
            if pieces:
                await session.put_data(pieces)
        await session.add_entries(entries)
        rp = await session.commit()
    return rp, session.stats, entries


async def entries_of(pool: StoragePool, rp: RecoveryPoint) -> list[Entry]:
    return [e async for e in pool.iter_entries(rp)]


async def read_entry(pool: StoragePool, entry: Entry) -> bytes:
    return b"".join([piece async for piece in pool.read_file(entry)])


async def read_back(pool: StoragePool, rp: RecoveryPoint) -> dict[bytes, bytes]:
    """Every regular file of `rp` with its content."""
    return {
        e.path: await read_entry(pool, e)
        for e in await entries_of(pool, rp)
        if e.type is EntryType.FILE
    }
