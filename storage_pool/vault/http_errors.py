"""Classifying HTTP object-store failures into the vault backend error tree.

Shared by the Azure and S3 backends (both ride on aiohttp): one table from HTTP status and
service error code to an error class, and one walk down an exception's causes to tell a DNS
failure from a refused connection, a TLS failure, a timeout or a reset.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

import aiohttp

from storage_pool.vault.backend import (
    AuthError,
    ContainerGone,
    IntegrityError,
    NotFound,
    Throttled,
    TransientError,
    TransientKind,
    VaultBackendError,
)

__all__ = ["from_status", "transient_kind"]

# Service codes meaning "the bytes you sent do not match their checksum".
INTEGRITY_CODES = frozenset(
    {
        "Md5Mismatch",  # Azure
        "Crc64Mismatch",  # Azure
        "InvalidMd5",  # Azure
        "BadDigest",  # S3
        "InvalidDigest",  # S3
        "XAmzContentSHA256Mismatch",  # S3
        "XAmzContentChecksumMismatch",  # S3 flexible checksums
    }
)
CONTAINER_GONE_CODES = frozenset({"ContainerNotFound", "NoSuchBucket", "ContainerBeingDeleted"})
THROTTLE_CODES = frozenset({"ServerBusy", "SlowDown", "TooManyRequests", "RequestLimitExceeded"})


def from_status(
    backend: str,
    name: str | None,
    reason: str,
    *,
    status: int | None,
    code: str | None,
    retry_after: float | None = None,
) -> VaultBackendError:
    """The error class for an HTTP answer (status, service error code)."""
    if code in INTEGRITY_CODES:
        return IntegrityError(backend, name, reason, status=status, code=code)
    if code in CONTAINER_GONE_CODES:
        return ContainerGone(backend, None, reason, status=status, code=code)
    if status in (401, 403):
        return AuthError(backend, name, reason, status=status, code=code)
    if status == 404:
        return NotFound(backend, name, reason, status=status, code=code)
    if status in (429, 503) or code in THROTTLE_CODES:
        return Throttled(backend, name, reason, retry_after=retry_after, status=status, code=code)
    if status == 408 or code in {"RequestTimeout", "OperationTimedOut"}:
        return TransientError(backend, name, reason, kind="timeout", status=status, code=code)
    if status is not None and status >= 500:
        return TransientError(backend, name, reason, kind="server_error", status=status, code=code)
    return VaultBackendError(backend, name, reason, status=status, code=code)


def transient_kind(exc: BaseException) -> TransientKind | None:
    """Where a transport failure happened, or None if ``exc`` is not a transport failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    kind: TransientKind | None = None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = _kind_of(current)
        # The most specific cause wins: a DNS error wrapped in a generic connect error is DNS.
        if found is not None and (kind is None or kind in ("other", "connect", "reset")):
            kind = found
        current = current.__cause__ or current.__context__
    return kind


def _kind_of(exc: BaseException) -> TransientKind | None:
    if isinstance(exc, aiohttp.ClientConnectorDNSError | socket.gaierror):
        return "dns"
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return "tls"
    if isinstance(
        exc, aiohttp.ServerTimeoutError | aiohttp.ConnectionTimeoutError | asyncio.TimeoutError
    ):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError):
        return "connect"
    if isinstance(
        exc,
        aiohttp.ServerDisconnectedError
        | aiohttp.ClientPayloadError
        | aiohttp.ClientOSError
        | ConnectionResetError
        | BrokenPipeError
        | aiohttp.ClientConnectionError,
    ):
        return "reset"
    if isinstance(exc, OSError):
        return "other"
    return None
