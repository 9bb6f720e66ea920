"""The agent's side of the HTTP data plane (spec: ``agent.protocol``'s module docstring).

One :class:`DataPlaneClient` per daemon holds one aiohttp session. TLS trusts only the CA
pinned at registration (``identity.ca_pem``), never the system store: a server is who our
own CA says it is. Every request carries ``Authorization: Bearer <agent_id>:<credential>``.

Errors and retries
------------------
Every failure surfaces as :class:`DataPlaneError` with the HTTP status (``None`` when no
response arrived), the server's ``{"error"}`` text and ``transient``. Transient failures
(connection refused or reset, timeouts, 502/503/504) are retried with exponential backoff
until ``retry_budget`` seconds (default 60) have passed; 4xx and other 5xx are permanent
and raised at once. A chunk that does not hash to its id is an
``storage_pool.errors.IntegrityError`` and is never retried.

Which calls may be retried after an *ambiguous* failure (the request may have reached the
server, e.g. a reset while waiting for the answer) depends on idempotence:

* ``missing``, ``put_chunks`` (content addressed), ``abort`` (idempotent by spec) and the
  restore reads are retried on every transient failure;
* ``open_session``, ``add_entries`` (appends to the manifest) and ``commit`` are retried
  only when the request provably did not reach the server's handler: the connection could
  not be opened, or the server answered 503 (not ready). A second ``add_entries`` after a
  lost answer would append the batch twice, so that case fails the backup instead.

Streams: ``restore_entries`` retries only until its first entry is yielded (the server
cannot resume a manifest stream); ``restore_chunks`` resumes after a transient failure by
asking again for the ids it has not yielded yet.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Final, Protocol

import aiohttp
import msgpack
import structlog

from agent import protocol
from agent.dataplane_errors import (
    DataPlaneError,
    MissingChunksError,
    RetryPolicy,
    classify,
    raise_for_answer,
)
from storage_pool import framing
from storage_pool.errors import IntegrityError
from storage_pool.ids import ChunkId
from storage_pool.manifest import Entry, entry_from_wire

__all__ = [
    "RESTORE_CHUNK_BATCH",
    "DataPlaneClient",
    "DataPlaneError",
    "MissingChunksError",
    "RetryPolicy",
    "SessionInfo",
    "ssl_context_for",
]

log = structlog.get_logger()

# Ids per restore-chunks request: with ~1.25 MiB mean chunks a request carries ~80 MiB, and
# a transient failure costs at most one such batch again.
RESTORE_CHUNK_BATCH: Final = 64
_MAX_ENTRY_BUFFER: Final = 256 * 1024 * 1024
_READ_BLOCK: Final = 1024 * 1024


class Credentials(Protocol):
    """What the client needs of an ``agent.config.AgentIdentity``."""

    @property
    def agent_id(self) -> str: ...
    @property
    def credential(self) -> str: ...
    @property
    def server_url(self) -> str: ...
    @property
    def ca_pem(self) -> str | bytes: ...


class SessionInfo:
    """The answer to ``POST /sessions``: where a backup job writes."""

    __slots__ = ("chunker", "compression_level", "data_source_id", "parent_rp_id", "session_id")

    def __init__(self, doc: Mapping[str, Any]) -> None:
        try:
            self.session_id = str(doc["session_id"])
            self.data_source_id = str(doc["data_source_id"])
            parent = doc.get("parent_rp_id")
            self.parent_rp_id = None if parent is None else str(parent)
            chunker = doc["chunker"]
            self.chunker = {k: int(chunker[k]) for k in ("min_size", "avg_size", "max_size")}
            self.compression_level = int(doc["compression_level"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataPlaneError("open session", f"malformed answer: {err!r}") from err


def ssl_context_for(ca_pem: str | bytes) -> ssl.SSLContext:
    """A client context that trusts ``ca_pem`` alone (no system store), hostname checked.

    An empty ``ca_pem`` (an identity that chose the system CAs) trusts the system store.
    """
    # cadata as bytes means DER to the ssl module: hand it PEM text.
    pem = ca_pem.decode("ascii") if isinstance(ca_pem, bytes) else ca_pem
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=pem or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


_CLIENT_ERRORS: Final = (aiohttp.ClientError, TimeoutError)


class DataPlaneClient:
    """Async client of ``/api/v1/agent``. Use as ``async with DataPlaneClient(ident):``."""

    def __init__(
        self,
        identity: Credentials,
        *,
        retry: RetryPolicy | None = None,
        connect_timeout: float = 15.0,
        read_timeout: float = 300.0,
    ) -> None:
        self._identity = identity
        self._base = identity.server_url.rstrip("/") + protocol.AGENT_API
        self._retry = retry or RetryPolicy()
        self._ssl: ssl.SSLContext | bool = (
            ssl_context_for(identity.ca_pem) if self._base.startswith("https:") else False
        )
        # No total timeout: a big upload or restore stream may take long; a stalled read
        # (sock_read) or connect does time out.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=read_timeout
        )
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> DataPlaneClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers={
                    "Authorization": (
                        f"Bearer {self._identity.agent_id}:{self._identity.credential}"
                    )
                },
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=8),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self,
        what: str,
        method: str,
        path: str,
        *,
        idempotent: bool,
        json_body: Any = None,
        data: bytes | None = None,
        expect: str = "json",
    ) -> Any:
        url = self._base + path
        headers = {"Content-Type": "application/octet-stream"} if data is not None else None

        async def once() -> Any:
            try:
                async with self._http().request(
                    method, url, json=json_body, data=data, headers=headers
                ) as resp:
                    await raise_for_answer(what, resp)
                    if expect == "bytes":
                        return await resp.read()
                    if expect == "none":
                        return None
                    try:
                        return await resp.json(content_type=None)
                    except ValueError as err:
                        raise DataPlaneError(
                            what, f"answer is not JSON: {err}", status=resp.status
                        ) from err
            except _CLIENT_ERRORS as err:
                raise classify(what, err) from err

        return await self._retry.run(what, once, idempotent=idempotent)

    # ------------------------------------------------------------------ backup session

    async def open_session(self, job_id: str) -> SessionInfo:
        doc = await self._call(
            f"open session for job {job_id}",
            "POST",
            "/sessions",
            idempotent=False,
            json_body={"job_id": job_id},
        )
        if not isinstance(doc, dict):
            raise DataPlaneError(f"open session for job {job_id}", "answer is not an object")
        return SessionInfo(doc)

    async def missing(self, sid: str, ids: Sequence[ChunkId]) -> list[ChunkId]:
        """Return the ids of ``ids`` the server wants uploaded, in request order."""
        what = f"missing query of session {sid}"
        out: list[ChunkId] = []
        for start in range(0, len(ids), protocol.MAX_IDS_PER_REQUEST):
            part = ids[start : start + protocol.MAX_IDS_PER_REQUEST]
            body = await self._call(
                what,
                "POST",
                f"/sessions/{sid}/missing",
                idempotent=True,
                data=protocol.pack_ids(part),
                expect="bytes",
            )
            try:
                got = [ChunkId(c) for c in protocol.iter_id_list(body)]
            except protocol.ProtocolError as err:
                raise DataPlaneError(what, f"malformed answer: {err}") from err
            asked = set(part)
            if any(c not in asked for c in got):
                raise DataPlaneError(what, "answer names ids that were not asked about")
            out.extend(got)
        return out

    async def put_chunks(self, sid: str, records: bytes) -> dict[str, int]:
        """Upload ``id | u32 len | frame`` records; returns the server's counts."""
        doc = await self._call(
            f"chunk upload of session {sid}",
            "POST",
            f"/sessions/{sid}/chunks",
            idempotent=True,
            data=records,
        )
        return _int_map(doc)

    async def add_entries(self, sid: str, packed: bytes) -> int:
        """Append msgpack-encoded entries (manifest order) to the session's manifest."""
        doc = await self._call(
            f"entries upload of session {sid}",
            "POST",
            f"/sessions/{sid}/entries",
            idempotent=False,
            data=packed,
        )
        return _int_map(doc).get("entries", 0)

    async def commit(self, sid: str, warnings: int, stats: Mapping[str, Any]) -> str:
        what = f"commit of session {sid}"
        doc = await self._call(
            what,
            "POST",
            f"/sessions/{sid}/commit",
            idempotent=False,
            json_body={"warnings": warnings, "stats": dict(stats)},
        )
        if not isinstance(doc, dict) or not isinstance(doc.get("rp_id"), str):
            raise DataPlaneError(what, "answer carries no rp_id")
        return str(doc["rp_id"])

    async def abort(self, sid: str) -> None:
        await self._call(
            f"abort of session {sid}", "DELETE", f"/sessions/{sid}", idempotent=True, expect="none"
        )

    # ------------------------------------------------------------------ restore

    async def restore_entries(self, job_id: str) -> AsyncGenerator[Entry, None]:
        """Stream the entries restore job ``job_id`` restores, each one validated."""
        what = f"restore entries of job {job_id}"
        url = f"{self._base}/restores/{job_id}/entries"

        async def opened() -> aiohttp.ClientResponse:
            try:
                resp = await self._http().get(url)
            except _CLIENT_ERRORS as err:
                raise classify(what, err) from err
            try:
                await raise_for_answer(what, resp)
            except BaseException:
                resp.release()
                raise
            return resp

        resp = await self._retry.run(what, opened, idempotent=True)
        unpacker = msgpack.Unpacker(
            raw=False, use_list=True, strict_map_key=True, max_buffer_size=_MAX_ENTRY_BUFFER
        )
        index = 0
        fed = 0
        try:
            while True:
                try:
                    block = await resp.content.read(_READ_BLOCK)
                except _CLIENT_ERRORS as err:
                    raise classify(what, err) from err
                if not block:
                    break
                unpacker.feed(block)
                fed += len(block)
                for doc in unpacker:
                    try:
                        entry = entry_from_wire(doc)
                    except (ValueError, TypeError) as err:
                        raise IntegrityError(what, f"entry {index}: {err}") from err
                    index += 1
                    yield entry
            if unpacker.tell() != fed:  # tell(): bytes consumed by complete objects
                raise IntegrityError(what, f"stream ends inside entry {index}")
        except msgpack.UnpackException as err:
            raise IntegrityError(what, f"entry {index}: {err}") from err
        finally:
            resp.release()

    async def restore_chunks(
        self, job_id: str, ids: Sequence[ChunkId]
    ) -> AsyncGenerator[tuple[ChunkId, bytes], None]:
        """Yield ``(id, plaintext)`` for every id of ``ids`` (each verified against its id).

        Order follows the server's answer; every requested id is yielded exactly once.
        """
        pending = list(dict.fromkeys(ids))
        while pending:
            batch = pending[:RESTORE_CHUNK_BATCH]
            async for cid, data in self._restore_batch(job_id, batch):
                yield cid, data
            pending = pending[len(batch) :]

    async def _restore_batch(
        self, job_id: str, batch: list[ChunkId]
    ) -> AsyncGenerator[tuple[ChunkId, bytes], None]:
        what = f"restore chunks of job {job_id}"
        url = f"{self._base}/restores/{job_id}/chunks"
        wanted = set(batch)
        deadline = time.monotonic() + self._retry.budget
        delay = self._retry.first
        while wanted:
            asked = [c for c in batch if c in wanted]
            try:
                async for cid, frame in self._records(what, url, asked):
                    if cid not in wanted:
                        raise IntegrityError(what, f"unrequested or repeated chunk {cid.hex()}")
                    try:
                        data = await asyncio.to_thread(framing.decode_verified, frame, cid)
                    except framing.FrameError as err:
                        raise IntegrityError(
                            f"chunk {cid.hex()} of job {job_id}", str(err)
                        ) from err
                    wanted.discard(cid)
                    yield cid, data
            except DataPlaneError as err:
                if not err.transient or time.monotonic() >= deadline:
                    raise
                log.warning("data_plane_retry", call=what, error=str(err), left=len(wanted))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry.cap)
                continue
            if wanted:
                raise MissingChunksError(what, [c for c in batch if c in wanted])

    async def _records(
        self, what: str, url: str, ids: list[ChunkId]
    ) -> AsyncGenerator[tuple[ChunkId, bytes], None]:
        try:
            async with self._http().post(
                url,
                data=protocol.pack_ids(ids),
                headers={"Content-Type": "application/octet-stream"},
            ) as resp:
                await raise_for_answer(what, resp)
                while True:
                    try:
                        head = await resp.content.readexactly(protocol.RECORD_HEADER_LEN)
                    except asyncio.IncompleteReadError as err:
                        if err.partial:
                            raise DataPlaneError(
                                what, "answer ends inside a record header", transient=True
                            ) from err
                        return
                    cid = head[: protocol.CHUNK_ID_LEN]
                    n = int.from_bytes(head[protocol.CHUNK_ID_LEN :], "big")
                    if n > protocol.MAX_RECORD_FRAME:
                        raise IntegrityError(what, f"record for chunk {cid.hex()} claims {n} B")
                    try:
                        frame = await resp.content.readexactly(n)
                    except asyncio.IncompleteReadError as err:
                        raise DataPlaneError(
                            what, f"answer ends inside chunk {cid.hex()}", transient=True
                        ) from err
                    yield ChunkId(cid), frame
        except _CLIENT_ERRORS as err:
            raise classify(what, err) from err


def _int_map(doc: Any) -> dict[str, int]:
    if not isinstance(doc, dict):
        return {}
    return {k: v for k, v in doc.items() if isinstance(v, int) and not isinstance(v, bool)}
