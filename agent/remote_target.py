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
always stored on the server before an entry referencing it is sent: ``put_sync`` starts
uploads without waiting for them (at most ``MAX_INFLIGHT_BYTES`` in flight, so chunking
and compressing overlap the server's verify-and-store), and every entry batch, flush and
commit first waits until all uploads started before it have been answered. An upload
that failed makes the next call raise, so nothing referencing it is ever sent.

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
# Uploads started and not yet answered; a worker starting one more waits below this.
MAX_INFLIGHT_BYTES: Final = 48 * 1024 * 1024

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
        self._puts = threading.Condition()
        self._put_bytes = 0  # guarded by _puts
        self._put_count = 0  # guarded by _puts
        self._put_error: BaseException | None = None  # guarded by _puts
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
        with self._puts:
            self._puts.notify_all()

    # ------------------------------------------------------------------ BackupTarget

    def missing_sync(self, ids: Sequence[ChunkId]) -> list[ChunkId]:
        if not ids:
            return []
        return self._wait(self.client.missing(self.session_id, list(dict.fromkeys(ids))))

    def put_sync(self, chunks: Sequence[EncodedChunk]) -> None:
        """Start uploading ``chunks`` (the server decodes and re-hashes every one); returns
        once they are on their way, not stored: see the module docstring."""
        batch: list[bytes] = []
        size = 0
        for c in chunks:
            record = protocol.pack_record(c.id, c.frame)
            if batch and size + len(record) > PUT_BATCH_BYTES:
                self._start_put(batch, size)
                batch, size = [], 0
            batch.append(record)
            size += len(record)
        if batch:
            self._start_put(batch, size)

    def _start_put(self, records: list[bytes], size: int) -> None:
        with self._puts:
            while self._put_count and self._put_bytes + size > MAX_INFLIGHT_BYTES:
                self._raise_put_error()
                self._puts.wait()
            self._raise_put_error()
            self._put_bytes += size
            self._put_count += 1
        if self._cancelled:
            self._put_done(size, None, TargetCancelledError("cancelled"))
            raise TargetCancelledError(f"backup session {self.session_id} was cancelled")
        fut = asyncio.run_coroutine_threadsafe(
            self.client.put_chunks(self.session_id, b"".join(records)), self._loop
        )
        with self._stats_lock:
            self._inflight.add(fut)
        fut.add_done_callback(lambda f: self._on_put(f, len(records), size))

    def _on_put(self, fut: concurrent.futures.Future[Any], count: int, size: int) -> None:
        with self._stats_lock:
            self._inflight.discard(fut)
        if fut.cancelled():
            self._put_done(size, None, TargetCancelledError("cancelled"))
            return
        err = fut.exception()
        if err is not None:
            self._put_done(size, None, err)
            return
        counts = fut.result()
        result = PutResult(
            chunks=counts.get("chunks", count),
            new_chunks=counts.get("new_chunks", 0),
            new_stored_bytes=counts.get("new_stored_bytes", 0),
        )
        self._put_done(size, result, None)

    def _put_done(self, size: int, result: PutResult | None, err: BaseException | None) -> None:
        with self._puts:
            self._put_bytes -= size
            self._put_count -= 1
            if err is not None and self._put_error is None:
                self._put_error = err
            self._puts.notify_all()
        if result is not None:
            with self._stats_lock:
                self.put.add(result)
                self.bytes_uploaded += size

    def _raise_put_error(self) -> None:
        """With ``_puts`` held: re-raise the first failed upload, in this thread."""
        err = self._put_error
        if err is None:
            return
        if isinstance(err, TargetCancelledError | concurrent.futures.CancelledError):
            raise TargetCancelledError(f"backup session {self.session_id} was cancelled")
        raise err

    def wait_puts(self) -> None:
        """Block until every upload started so far is answered; raise if one failed."""
        with self._puts:
            while self._put_count:
                self._puts.wait()
            self._raise_put_error()

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
        self.wait_puts()  # the server must hold every chunk these entries reference
        body = b"".join(self._pending)
        count = len(self._pending)
        self._pending = []
        self._wait(self.client.add_entries(self.session_id, body))
        self.entries_sent += count

    async def flush(self) -> None:
        """Send the buffered entries (from the event loop; the walker must be done)."""
        await asyncio.to_thread(self.wait_puts)
        with self._entries_lock:
            body = b"".join(self._pending)
            count = len(self._pending)
            self._pending = []
        if count:
            await self.client.add_entries(self.session_id, body)
            self.entries_sent += count
