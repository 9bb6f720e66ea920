"""A loopback HTTP proxy that injects faults between a real client and a real service.

Clients connect to the proxy as if it were the service (Azurite, moto). It forwards bytes
both ways, reading only enough of each request (head + Content-Length) to apply the next
armed fault to the next matching request:

- `fail_next`: answer the next N requests itself with a canned error (503 ServerBusy/SlowDown
  with Retry-After by default), never reaching the service;
- `reset_next`: close the connection on the next N requests, before forwarding anything;
- `flip_next_body`: flip one byte of the next request body large enough, after the client
  computed its checksum (damage in transit);
- `cut_next_body`: forward part of the next large request body, then drop the connection
  (an upload interrupted mid-stream).

Faults are one-shot and counted (`applied`) so a test can assert they happened.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

__all__ = ["FaultProxy"]

_HEAD_LIMIT = 64 * 1024
_PUMP = 256 * 1024


@dataclass
class _Faults:
    fail: int = 0
    fail_status: int = 503
    fail_code: str = "ServerBusy"
    retry_after: int | None = 1
    reset: int = 0
    flip_at: int | None = None
    cut_after: int | None = None
    cuts: int = 0
    applied: dict[str, int] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.applied[what] = self.applied.get(what, 0) + 1


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = "127.0.0.1"
        self.port = 0
        self.requests = 0
        self._faults = _Faults()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ arming

    def fail_next(
        self,
        count: int,
        *,
        status: int = 503,
        code: str = "ServerBusy",
        retry_after: int | None = 1,
    ) -> None:
        self._faults.fail = count
        self._faults.fail_status = status
        self._faults.fail_code = code
        self._faults.retry_after = retry_after

    def reset_next(self, count: int) -> None:
        self._faults.reset = count

    def flip_next_body(self, offset: int) -> None:
        self._faults.flip_at = offset

    def cut_next_body(self, after: int, *, count: int = 1) -> None:
        """Cut the next ``count`` bodies longer than ``after`` (aiohttp re-sends an
        idempotent request once on a reused connection, so one cut may be absorbed)."""
        self._faults.cut_after = after
        self._faults.cuts = count

    def disarm(self) -> None:
        applied = self._faults.applied
        self._faults = _Faults(applied=applied)

    @property
    def applied(self) -> dict[str, int]:
        return dict(self._faults.applied)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0, limit=_HEAD_LIMIT)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # A connection accepted just before close() gets its task a loop turn later:
        # turn the loop and sweep again, or its sockets outlive the loop (ResourceWarning).
        for _ in range(3):
            await asyncio.sleep(0)
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # ------------------------------------------------------------------ proxying

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        swriter: asyncio.StreamWriter | None = None
        pump: asyncio.Task[None] | None = None
        try:
            sreader, swriter = await asyncio.open_connection(*self.upstream)
            pump = asyncio.create_task(_copy(sreader, cwriter), name="fault-proxy-pump")
            while await self._one_request(creader, cwriter, swriter):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
            for writer in (cwriter, swriter):
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
            self._tasks.discard(task)

    async def _one_request(
        self,
        creader: asyncio.StreamReader,
        cwriter: asyncio.StreamWriter,
        swriter: asyncio.StreamWriter,
    ) -> bool:
        """Handle one request; False when the connection is to be closed."""
        try:
            head = await creader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        self.requests += 1
        length, expect_continue = _body_info(head)
        faults = self._faults
        if faults.reset > 0:
            faults.reset -= 1
            faults.count("reset")
            return False
        if faults.fail > 0:
            faults.fail -= 1
            faults.count("fail")
            if not expect_continue and length:
                await creader.readexactly(length)
            is_head = head.startswith(b"HEAD ")
            cwriter.write(
                _canned(faults.fail_status, faults.fail_code, faults.retry_after, is_head)
            )
            await cwriter.drain()
            return False
        flip = faults.flip_at if faults.flip_at is not None and length > faults.flip_at else None
        cut = (
            faults.cut_after if faults.cut_after is not None and length > faults.cut_after else None
        )
        if flip is not None:
            faults.flip_at = None
            faults.count("flip")
        if cut is not None:
            faults.cuts -= 1
            if faults.cuts <= 0:
                faults.cut_after = None
            faults.count("cut")
        swriter.write(head)
        sent = 0
        while sent < length:
            block = await creader.read(min(_PUMP, length - sent))
            if not block:
                return False
            if flip is not None and sent <= flip < sent + len(block):
                mutable = bytearray(block)
                mutable[flip - sent] ^= 0xFF
                block = bytes(mutable)
            if cut is not None and sent + len(block) > cut:
                swriter.write(block[: cut - sent])
                await swriter.drain()
                return False
            swriter.write(block)
            await swriter.drain()
            sent += len(block)
        await swriter.drain()
        return True


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while block := await reader.read(_PUMP):
            writer.write(block)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def _body_info(head: bytes) -> tuple[int, bool]:
    length = 0
    expect_continue = False
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        key = key.strip().lower()
        if key == b"content-length":
            length = int(value.strip())
        elif key == b"expect" and value.strip().lower() == b"100-continue":
            expect_continue = True
        elif key == b"transfer-encoding" and b"chunked" in value.lower():
            raise ConnectionError("fault proxy does not handle chunked request bodies")
    return length, expect_continue


def _canned(status: int, code: str, retry_after: int | None, is_head: bool) -> bytes:
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>injected by the test fault proxy</Message></Error>"
    ).encode()
    reason = {503: "Service Unavailable", 500: "Internal Server Error", 429: "Too Many Requests"}
    lines = [
        f"HTTP/1.1 {status} {reason.get(status, 'Error')}",
        "Content-Type: application/xml",
        f"Content-Length: {0 if is_head else len(body)}",
        f"x-ms-error-code: {code}",
        "Connection: close",
    ]
    if retry_after is not None:
        lines.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if is_head else body)
