"""Chunk files on disk: `chunks/<first 3 hex digits>/<64 hex digits>`, one frame each.

Write order for a batch of new chunks (pool.put_chunks), at durability level "file":
  1. each frame goes to a temp file in its shard directory and is fsynced;
  2. the temp file is renamed to the chunk's name (replacing an older copy is harmless:
     same id, same content; it also heals a damaged copy);
  3. every shard directory that gained a name is fsynced;
  4. only then are the chunks entered in the index (see index.py).
At level "filesystem" (the default), steps 1 and 3 are replaced by one syncfs() of the
pool's filesystem per batch of many chunks, taken before step 4; until then the chunks
are "pending" (known to the process, not to the index). Either way nothing references a
chunk before it is durable: a commit waits for the sync. Temp files left by a crash carry
`.tmp-` in their name and are removed when the pool is next opened.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from storage_pool import framing
from storage_pool.atomicfile import TMP_MARK, fsync_dir, make_dir_durable, write_durable_tmp
from storage_pool.errors import ChunkCorruptError, ChunkNotFoundError
from storage_pool.ids import ChunkId

CHUNKS_DIR = "chunks"
QUARANTINE_DIR = "quarantine"
SHARD_DIGITS = 3
_NAME_RE = re.compile(r"^[0-9a-f]{64}$")
_SHARD_RE = re.compile(r"^[0-9a-f]{3}$")


@dataclass(frozen=True, slots=True)
class ChunkFile:
    id: ChunkId
    path: Path
    size: int
    mtime_ns: int


class ChunkStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / CHUNKS_DIR
        self.quarantine_dir = root / QUARANTINE_DIR

    def path_of(self, cid: ChunkId) -> Path:
        name = cid.hex()
        return self.dir / name[:SHARD_DIGITS] / name

    def write_tmp(self, chunk: framing.EncodedChunk, *, fsync: bool = True) -> Path:
        """Step 1: a temp file holding the frame (fsynced at durability level "file")."""
        final = self.path_of(chunk.id)
        try:
            return write_durable_tmp(final, chunk.frame, fsync=fsync)
        except FileNotFoundError:
            make_dir_durable(final.parent)
            return write_durable_tmp(final, chunk.frame, fsync=fsync)

    def rename_into_place(self, cid: ChunkId, tmp: Path) -> None:
        """Step 2."""
        os.replace(tmp, self.path_of(cid))

    def sync_dirs(self, ids: Sequence[ChunkId]) -> None:
        """Step 3: fsync each shard directory these chunks live in, once."""
        for shard in sorted({cid.hex()[:SHARD_DIGITS] for cid in ids}):
            fsync_dir(self.dir / shard)

    def read_frame(self, cid: ChunkId) -> bytes:
        path = self.path_of(cid)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError as err:
            raise ChunkNotFoundError(cid.hex(), path) from err

    def get(self, cid: ChunkId) -> bytes:
        """The chunk's plaintext, verified against its id."""
        frame = self.read_frame(cid)
        try:
            return framing.decode_verified(frame, cid)
        except framing.FrameError as err:
            raise ChunkCorruptError(cid.hex(), self.path_of(cid), str(err)) from err

    def unlink(self, cid: ChunkId) -> None:
        self.path_of(cid).unlink(missing_ok=True)

    def quarantine(self, cid: ChunkId) -> Path | None:
        """Move a damaged chunk aside (kept for forensics) so it is written afresh."""
        src = self.path_of(cid)
        make_dir_durable(self.quarantine_dir)
        dst = self.quarantine_dir / f"{cid.hex()}.{time.time_ns()}.bad"
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            return None
        fsync_dir(src.parent)
        fsync_dir(self.quarantine_dir)
        return dst

    def shards(self) -> list[Path]:
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        return [self.dir / n for n in names if _SHARD_RE.match(n)]

    def scan_shard(self, shard: Path) -> tuple[list[ChunkFile], list[Path]]:
        """(chunk files, foreign entries) of one shard directory; temp files are skipped."""
        chunks: list[ChunkFile] = []
        foreign: list[Path] = []
        try:
            entries = list(os.scandir(shard))
        except FileNotFoundError:
            return chunks, foreign
        for entry in entries:
            name = entry.name
            if TMP_MARK in name:
                continue
            if not _NAME_RE.match(name) or name[:SHARD_DIGITS] != shard.name:
                foreign.append(Path(entry.path))
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):  # a directory or link posing as a chunk
                foreign.append(Path(entry.path))
                continue
            chunks.append(
                ChunkFile(
                    ChunkId(bytes.fromhex(name)), Path(entry.path), st.st_size, st.st_mtime_ns
                )
            )
        return chunks, foreign

    def iter_files(self) -> Iterator[ChunkFile]:
        for shard in self.shards():
            yield from self.scan_shard(shard)[0]

    def foreign_entries(self) -> list[Path]:
        """Anything in chunks/ that is not a chunk file, a temp file or a shard."""
        out: list[Path] = []
        if self.dir.is_dir():
            for entry in os.scandir(self.dir):
                if not _SHARD_RE.match(entry.name) or not entry.is_dir(follow_symlinks=False):
                    out.append(Path(entry.path))
        for shard in self.shards():
            out.extend(self.scan_shard(shard)[1])
        return out

    def remove_stale_tmp(self) -> int:
        """Delete temp files; only safe while no writer runs (the pool is opened exclusively)."""
        removed = 0
        for shard in self.shards():
            for entry in os.scandir(shard):
                if TMP_MARK in entry.name:
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def disk_usage(self) -> shutil._ntuple_diskusage:
        return shutil.disk_usage(self.root)
