"""A backup target that is a server session over the HTTP data plane.

The backup walker (``agent.backup_source``) runs in worker threads and calls the
``BackupTarget`` methods synchronously. Each call here schedules the matching
:class:`~agent.http_client.DataPlaneClient` coroutine on the agent's event loop with
``asyncio.run_coroutine_threadsafe`` and blocks its worker thread until the answer comes;
the event loop itself never blocks. Never call these methods from the event loop thread:
that would deadlock (guarded by a check).

Ordering: entries must reach the server in manifest order. ``add_entries_sync`` buffers
them and sends full batches of ``entry_batch`` (1000) under a lock, so batches leave in
the order the walker produced them; :meth:`RemoteTarget.flush_sync` (or
:meth:`RemoteTarget.flush` on the loop) sends the tail before the commit. A chunk is
always uploaded (``put_sync``) before an entry referencing it is added, because the
walker adds an entry only after its chunks are put: the server refuses unknown chunks.

:meth:`RemoteTarget.cancel` cancels the requests in flight, so a worker waiting on a slow
or retrying request wakes at once with :class:`TargetCancelledError` (as does every later
call).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, Final, TypeVar

import msgpack

from agent import protocol
from agent.http_client import DataPlaneClient
from storage_pool.framing import EncodedChunk
from storage_pool.ids import ChunkId
from storage_pool.manifest import Entry
from storage_pool.session import PutResult

__all__ = ["ENTRY_BATCH", "PUT_BATCH_BYTES", "RemoteTarget", "TargetCancelledError"]

ENTRY_BATCH: Final = 1000
# One chunks request carries at most this much; larger puts are split.
PUT_BATCH_BYTES: Final = 32 * 1024 * 1024

T = TypeVar("T")


class TargetCancelledError(Exception):
    """The backup was cancelled: this call (and every later one) did not complete."""


class RemoteTarget:
    """``BackupTarget`` over one open server session ``sid``."""

    def __init__(
        self,
        client: DataPlaneClient,
        session_id: str,
        loop: asyncio.AbstractEventLoop,
        *,
        entry_batch: int = ENTRY_BATCH,
    ) -> None:
        self.client = client
        self.session_id = session_id
        self._loop = loop
        self._entry_batch = entry_batch
        self._packer = msgpack.Packer(use_bin_type=True)
        self._pending: list[bytes] = []
        self._entries_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._inflight: set[concurrent.futures.Future[Any]] = set()
        self._cancelled = False
        self.put = PutResult()
        self.entries_sent = 0
        self.bytes_uploaded = 0

    # ------------------------------------------------------------------ plumbing

    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            coro.close()
            raise RuntimeError("RemoteTarget's sync methods must not run on the event loop")
        if self._cancelled:
            coro.close()
            raise TargetCancelledError(f"backup session {self.session_id} was cancelled")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        with self._stats_lock:
            self._inflight.add(fut)
        try:
            return fut.result()
        except concurrent.futures.CancelledError as err:
            raise TargetCancelledError(f"backup session {self.session_id} was cancelled") from err
        finally:
            with self._stats_lock:
                self._inflight.discard(fut)

    def cancel(self) -> None:
        """Fail every call in flight and every later one (thread-safe)."""
        self._cancelled = True
        with self._stats_lock:
            inflight = list(self._inflight)
        for fut in inflight:
            fut.cancel()

    # ------------------------------------------------------------------ BackupTarget

    def missing_sync(self, ids: Sequence[ChunkId]) -> list[ChunkId]:
        if not ids:
            return []
        return self._wait(self.client.missing(self.session_id, list(dict.fromkeys(ids))))

    def put_sync(self, chunks: Sequence[EncodedChunk]) -> None:
        """Upload ``chunks``; the server decodes and re-hashes every one."""
        total = PutResult()
        batch: list[bytes] = []
        size = 0
        for c in chunks:
            record = protocol.pack_record(c.id, c.frame)
            if batch and size + len(record) > PUT_BATCH_BYTES:
                total.add(self._send_records(batch, size))
                batch, size = [], 0
            batch.append(record)
            size += len(record)
        if batch:
            total.add(self._send_records(batch, size))

    def _send_records(self, records: list[bytes], size: int) -> PutResult:
        counts = self._wait(self.client.put_chunks(self.session_id, b"".join(records)))
        result = PutResult(
            chunks=counts.get("chunks", len(records)),
            new_chunks=counts.get("new_chunks", 0),
            new_stored_bytes=counts.get("new_stored_bytes", 0),
        )
        with self._stats_lock:
            self.put.add(result)
            self.bytes_uploaded += size
        return result

    def add_entries_sync(self, entries: Sequence[Entry]) -> None:
        with self._entries_lock:
            for entry in entries:
                self._pending.append(self._packer.pack(entry.to_wire()))
                if len(self._pending) >= self._entry_batch:
                    self._send_entries_locked()

    def flush_sync(self) -> None:
        """Send the buffered entries (from a worker thread)."""
        with self._entries_lock:
            self._send_entries_locked()

    def _send_entries_locked(self) -> None:
        if not self._pending:
            return
        body = b"".join(self._pending)
        count = len(self._pending)
        self._pending = []
        self._wait(self.client.add_entries(self.session_id, body))
        self.entries_sent += count

    async def flush(self) -> None:
        """Send the buffered entries (from the event loop; the walker must be done)."""
        with self._entries_lock:
            body = b"".join(self._pending)
            count = len(self._pending)
            self._pending = []
        if count:
            await self.client.add_entries(self.session_id, body)
            self.entries_sent += count
