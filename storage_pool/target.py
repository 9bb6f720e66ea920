"""Where a tree walk sends what it finds: the three calls of a backup session.

The walker (walk.py) only needs to ask which chunks are missing, store chunks and add
manifest entries; it never commits. A local `Session` answers through `LocalTarget`; the
agent answers over HTTP with the same three calls, so the walker runs the same on both
sides of the network. Committing stays with the caller, after the walk returned.

Contracts of a target:
- `missing_sync` is thread-safe (worker threads call it). Every chunk it reports present
  stays usable until the session ends, so an entry may reference it afterwards.
- `put_sync` is thread-safe and idempotent: storing a chunk twice is harmless. On return
  the chunks may be referenced by entries.
- `add_entries_sync` is called from one thread, with entries in manifest order
  (depth-first, names sorted bytewise), each batch after the previous one.
Each call may carry many ids or entries: a remote target pays a round trip per call, and
the walker batches accordingly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from storage_pool.framing import EncodedChunk
from storage_pool.ids import ChunkId
from storage_pool.manifest import Entry
from storage_pool.session import Session


class BackupTarget(Protocol):
    def missing_sync(self, ids: Sequence[ChunkId]) -> list[ChunkId]:
        """Which of `ids` the target lacks (each once, in first-seen order)."""
        ...

    def put_sync(self, chunks: Sequence[EncodedChunk]) -> None:
        """Store framed chunks durably enough for a later commit."""
        ...

    def add_entries_sync(self, entries: Sequence[Entry]) -> None:
        """Append entries to the recovery point's manifest, in manifest order."""
        ...


class LocalTarget:
    """A `BackupTarget` over an open local session. The chunks come from this process's
    own chunker and framing, so they are stored without re-hashing (verify=False)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def missing_sync(self, ids: Sequence[ChunkId]) -> list[ChunkId]:
        return self.session.missing_sync(ids)

    def put_sync(self, chunks: Sequence[EncodedChunk]) -> None:
        self.session.put_sync(chunks, verify=False)

    def add_entries_sync(self, entries: Sequence[Entry]) -> None:
        self.session.add_entries_sync(entries)
