"""Errors of the data plane client, how failures are classified, and the retry policy.

Classification (what the caller does): ``transient`` failures (connection refused or reset,
timeouts, a cut-short answer, HTTP 502/503/504) may be retried; everything else is
permanent. ``sent`` is False when the request certainly never reached the server's
handler (no connection, or 503 "not ready"), which makes even a non-idempotent call safe
to retry. :class:`RetryPolicy` is the only place that retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TypeVar

import aiohttp
import structlog

from storage_pool.ids import ChunkId

__all__ = [
    "TRANSIENT_STATUSES",
    "DataPlaneError",
    "MissingChunksError",
    "RetryPolicy",
    "classify",
    "raise_for_answer",
]

log = structlog.get_logger()

TRANSIENT_STATUSES: Final = frozenset({502, 503, 504})

T = TypeVar("T")


class DataPlaneError(Exception):
    """A data plane call failed. ``status`` is None when no HTTP answer arrived."""

    def __init__(
        self,
        what: str,
        error: str,
        *,
        status: int | None = None,
        transient: bool = False,
        sent: bool = True,
    ) -> None:
        where = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(f"{what}: {error} ({where})")
        self.what = what
        self.error = error
        self.status = status
        self.transient = transient
        # False when the request certainly never reached the server's handler.
        self.sent = sent


class MissingChunksError(DataPlaneError):
    """The server answered a restore-chunks request without some of the ids."""

    def __init__(self, what: str, ids: Sequence[ChunkId]) -> None:
        super().__init__(
            what, f"server did not send {len(ids)} chunk(s), e.g. {ids[0].hex()}", status=200
        )
        self.ids = tuple(ids)


class RetryPolicy:
    """Exponential backoff from ``first`` doubling to ``cap``, for ``budget`` seconds."""

    def __init__(self, budget: float = 60.0, first: float = 0.25, cap: float = 8.0) -> None:
        self.budget = budget
        self.first = first
        self.cap = cap

    async def run(
        self,
        what: str,
        call: Callable[[], Awaitable[T]],
        *,
        idempotent: bool,
    ) -> T:
        deadline = time.monotonic() + self.budget
        delay = self.first
        attempt = 1
        while True:
            try:
                return await call()
            except DataPlaneError as err:
                retry = err.transient and (idempotent or not err.sent)
                left = deadline - time.monotonic()
                if not retry or left <= 0:
                    raise
                wait = min(delay, left)
                log.warning(
                    "data_plane_retry", call=what, attempt=attempt, error=str(err), wait_s=wait
                )
                await asyncio.sleep(wait)
                delay = min(delay * 2, self.cap)
                attempt += 1


def _decode_error(body: bytes) -> str:
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        doc = json.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return str(doc["error"])
    text = body.decode("utf-8", "replace").strip()
    return text[:300] or "no error text"


async def raise_for_answer(what: str, resp: aiohttp.ClientResponse) -> None:
    """Turn a non-2xx answer into DataPlaneError with the server's error text."""
    if resp.status < 300:
        return
    try:
        body = await resp.content.read(64 * 1024)
    except (aiohttp.ClientError, TimeoutError):
        body = b""
    raise DataPlaneError(
        what,
        _decode_error(body),
        status=resp.status,
        transient=resp.status in TRANSIENT_STATUSES,
        # 503 is "not ready": the handler did not act on the request.
        sent=resp.status != 503,
    )


def classify(what: str, err: BaseException) -> DataPlaneError:
    """Map an aiohttp/transport exception to a DataPlaneError."""
    if isinstance(err, aiohttp.ClientConnectorCertificateError):
        return DataPlaneError(what, f"server certificate not trusted: {err}", sent=False)
    if isinstance(err, aiohttp.ClientConnectorError):
        return DataPlaneError(what, f"cannot connect: {err}", transient=True, sent=False)
    if isinstance(err, aiohttp.ClientSSLError):
        return DataPlaneError(what, f"TLS failed: {err}")
    if isinstance(err, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return DataPlaneError(what, f"connection lost: {err!r}", transient=True)
    if isinstance(err, aiohttp.ClientPayloadError):
        return DataPlaneError(what, f"answer cut short: {err}", transient=True)
    if isinstance(err, TimeoutError):
        return DataPlaneError(what, "timed out", transient=True)
    return DataPlaneError(what, f"{type(err).__name__}: {err}")
