"""The Azure Blob vault backend (azure-storage-blob aio), tested against Azurite.

Objects are block blobs named ``prefix + name`` in one container. Objects up to
``block_size`` go up in one Put Blob; larger ones as staged blocks (``block_size`` each, at
most ``max_concurrency`` in flight) committed by one Put Block List. Every request carries
the Content-MD5 of its body, which the service checks; the whole-object SHA-256 is checked
against the caller's before the commit. Block ids are ``<random token>-<index>`` per put, so
two puts of one name never mix blocks; blocks never committed are dropped by the service
after 7 days or by `abort_stale_uploads`.

The SDK's own retries are off (``retry_total=0``): `retry.Retrying` does that. Auth is a
connection string, or an account URL with a SAS token or account key as ``credential``.
``api_version`` may be pinned for emulators that reject the SDK's newest one.
"""

from __future__ import annotations

import asyncio
import functools
import io
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError
from azure.storage.blob import BlobBlock
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from storage_pool.vault.backend import (
    AuthError,
    NotFound,
    ObjectInfo,
    PutData,
    TransientError,
    VaultBackend,
    VaultBackendError,
    check_name,
    check_prefix,
    empty_or_bad_range,
    parse_retry_after,
)
from storage_pool.vault.blocks import Block, BlockSource, data_size, send_blocks
from storage_pool.vault.http_errors import from_status, transient_kind

__all__ = ["AzureBackend"]

T = TypeVar("T")
MiB = 1024 * 1024
# Put Blob hands the SDK's transport a bytes body, which aiohttp sends in one piece (and
# warns about past 1 MiB); anything larger goes as staged blocks, streamed from BytesIO.
_SINGLE_PUT_MAX = 1 * MiB


class AzureBackend(VaultBackend):
    def __init__(
        self,
        container: str,
        *,
        connection_string: str | None = None,
        account_url: str | None = None,
        credential: str | None = None,
        prefix: str = "",
        block_size: int = 8 * MiB,
        max_concurrency: int = 4,
        api_version: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        if (connection_string is None) == (account_url is None):
            raise ValueError("give exactly one of connection_string or account_url")
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"azure prefix must end with '/': {prefix!r}")
        if not 1 * MiB <= block_size <= 100 * MiB or max_concurrency < 1:
            raise ValueError("block_size must be 1..100 MiB and max_concurrency at least 1")
        options: dict[str, Any] = {
            "retry_total": 0,
            "max_single_put_size": block_size,
            "max_block_size": block_size,
            "connection_timeout": 20,
            "read_timeout": timeout,
        }
        if api_version is not None:
            options["api_version"] = api_version
        if connection_string is not None:
            self._service = BlobServiceClient.from_connection_string(connection_string, **options)
        else:
            assert account_url is not None
            self._service = BlobServiceClient(account_url, credential=credential, **options)
        self._container: ContainerClient = self._service.get_container_client(container)
        self.container = container
        self.prefix = prefix
        self.block_size = block_size
        self.max_concurrency = max_concurrency
        self._timeout = timeout
        self._closed = False

    @property
    def description(self) -> str:
        where = f" prefix {self.prefix}" if self.prefix else ""
        return f"azure container {self.container}{where} at {self._service.primary_hostname}"

    # ------------------------------------------------------------------ errors

    async def _call(self, name: str | None, make: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                return await make()
        except VaultBackendError:
            raise
        except HttpResponseError as err:
            raise self._classify(name, err) from err
        except (AzureError, OSError, TimeoutError) as err:
            kind = transient_kind(err) or "other"
            raise TransientError(self.description, name, _reason(err), kind=kind) from err

    def _classify(self, name: str | None, err: HttpResponseError) -> VaultBackendError:
        headers: Mapping[str, str] = getattr(err.response, "headers", None) or {}
        retry_after = parse_retry_after(headers.get("Retry-After"))
        status = err.status_code
        raw_code = getattr(err, "error_code", None) or headers.get("x-ms-error-code")
        code = None if raw_code is None else str(getattr(raw_code, "value", raw_code))
        if status == 400 and "md5" in str(err.message).lower() and "match" in str(err.message):
            code = "Md5Mismatch"  # Azurite says InvalidOperation where Azure says Md5Mismatch
        return from_status(
            self.description,
            name,
            _reason(err),
            status=status,
            code=code,
            retry_after=retry_after,
        )

    def _blob(self, name: str) -> str:
        return self.prefix + check_name(name)

    # ------------------------------------------------------------------ objects

    async def put(self, name: str, data: PutData, *, sha256: bytes | None = None) -> None:
        blob = self._container.get_blob_client(self._blob(name))
        size = await asyncio.to_thread(data_size, data)
        source = BlockSource(data, self.block_size, backend=self.description, name=name, size=size)
        if size <= _SINGLE_PUT_MAX:
            blocks = [b async for b in source.blocks()]
            source.verify(sha256)
            (only,) = blocks
            await self._call(
                name,
                lambda: blob.upload_blob(
                    only.data,
                    length=len(only.data),
                    overwrite=True,
                    transactional_content_md5=only.md5,
                    max_concurrency=1,
                ),
            )
            return
        token = secrets.token_hex(8)

        async def stage(block: Block) -> BlobBlock:
            block_id = f"{token}-{block.index:06d}"
            await self._call(
                name,
                lambda: blob.stage_block(
                    block_id,
                    io.BytesIO(block.data),
                    length=len(block.data),
                    transactional_content_md5=block.md5,
                ),
            )
            return BlobBlock(block_id=block_id)

        block_list = await send_blocks(source, self.max_concurrency, stage)
        source.verify(sha256)
        await self._call(name, lambda: blob.commit_block_list(block_list))

    async def create_if_absent(self, name: str, data: bytes) -> bool:
        blob = self._container.get_blob_client(self._blob(name))
        source = BlockSource(
            data, max(len(data), 1), backend=self.description, name=name, size=len(data)
        )
        (only,) = [b async for b in source.blocks()]
        try:
            await self._call(
                name,
                lambda: blob.upload_blob(
                    data,
                    length=len(data),
                    overwrite=False,
                    transactional_content_md5=only.md5,
                    max_concurrency=1,
                ),
            )
        except VaultBackendError as err:
            if isinstance(err.__cause__, ResourceExistsError) or err.code in (
                "BlobAlreadyExists",
                "ConditionNotMet",
            ):
                return False
            raise
        return True

    async def get(self, name: str) -> bytes:
        blob = self._container.get_blob_client(self._blob(name))

        async def read() -> bytes:
            stream = await blob.download_blob(max_concurrency=self.max_concurrency)
            return await stream.readall()

        return await self._call(name, read)

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        if (early := await empty_or_bad_range(self, name, offset, length)) is not None:
            return early
        blob = self._container.get_blob_client(self._blob(name))

        async def read() -> bytes:
            stream = await blob.download_blob(
                offset=offset, length=length, max_concurrency=self.max_concurrency
            )
            return await stream.readall()

        try:
            return await self._call(name, read)
        except VaultBackendError as err:
            if err.status == 416:  # InvalidRange: the range starts at or past the end
                return b""
            raise

    async def head(self, name: str) -> int | None:
        blob = self._container.get_blob_client(self._blob(name))
        try:
            props = await self._call(name, blob.get_blob_properties)
        except NotFound:
            return None
        size: int = props.size
        return size

    async def delete(self, name: str) -> None:
        blob = self._container.get_blob_client(self._blob(name))
        try:
            await self._call(name, blob.delete_blob)
        except NotFound:
            return

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        check_prefix(prefix)
        pages = self._container.list_blobs(name_starts_with=self.prefix + prefix)
        iterator = pages.__aiter__()
        while True:
            try:
                props = await self._call(None, iterator.__anext__)
            except StopAsyncIteration:
                return
            yield ObjectInfo(props.name[len(self.prefix) :], props.size)

    # ------------------------------------------------------------------ container

    async def ensure_container(self) -> None:
        try:
            await self._call(None, self._container.create_container)
        except VaultBackendError as err:
            if err.code == "ContainerAlreadyExists" or err.status == 409:
                return
            raise

    async def container_exists(self) -> bool:
        exists: bool = await self._call(None, self._container.exists)
        return exists

    async def abort_stale_uploads(self, older_than: timedelta) -> int:
        """Blobs that hold only uncommitted blocks (a put that never committed) and were
        last touched before the cutoff: commit an empty block list on the condition that
        nothing is committed there, then delete it, which drops the uncommitted blocks."""
        cutoff = datetime.now(UTC) - older_than
        removed = 0
        pages = self._container.list_blobs(
            name_starts_with=self.prefix, include=["uncommittedblobs"]
        )
        stale: list[str] = []
        iterator = pages.__aiter__()
        while True:
            try:
                props = await self._call(None, iterator.__anext__)
            except StopAsyncIteration:
                break
            modified = props.last_modified
            if props.size == 0 and modified is not None and modified < cutoff:
                stale.append(props.name)
        for blob_name in stale:
            blob = self._container.get_blob_client(blob_name)
            committed, _uncommitted = await self._call(
                blob_name, functools.partial(blob.get_block_list, "all")
            )
            if committed:
                continue
            try:
                await self._call(
                    blob_name, functools.partial(blob.commit_block_list, [], if_none_match="*")
                )
                await self._call(blob_name, blob.delete_blob)
            except (NotFound, AuthError):
                raise
            except VaultBackendError as err:
                if err.status in (409, 412):
                    continue  # committed meanwhile by a running put: not stale
                raise
            removed += 1
        return removed

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._container.close()
        await self._service.close()


def _reason(err: BaseException) -> str:
    message = str(getattr(err, "message", None) or err or type(err).__name__)
    # Azure appends request ids, times and the raw XML body: keep the sentence and the code.
    first = message.split("\nRequestId:", maxsplit=1)[0].split("\nContent:", maxsplit=1)[0]
    code = getattr(err, "error_code", None)
    code = getattr(code, "value", code)
    text = " ".join(first.split())[:500]
    return f"{text} ({code})" if code and str(code) not in text else text
