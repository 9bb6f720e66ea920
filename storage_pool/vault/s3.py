"""The S3 vault backend (aiobotocore), tested against moto server.

Objects are keys ``prefix + name`` in one bucket. Objects up to ``part_size`` go up in one
PutObject; larger ones as a multipart upload (``part_size`` parts, at most
``max_concurrency`` in flight) completed by CompleteMultipartUpload, which makes the object
visible at once. Every request body carries its Content-MD5, which the service checks, and
the ETag it answers (the MD5 of what it stored, without SSE-KMS/SSE-C) is compared too, for
services that ignore Content-MD5 (moto): a damaged part fails the upload before it
completes; a damaged single PutObject is deleted again (so on such services a damaged small
object can be visible for that moment). The whole-object SHA-256 is checked against the
caller's before completing. A failed put aborts
its multipart upload; uploads orphaned by a crash are aborted by `abort_stale_uploads`.

botocore's own retries are off (``total_max_attempts=1``) and so are its flexible
checksums (Content-MD5 is ours): `retry.Retrying` is the one place that retries.
``endpoint_url`` points at moto or any S3-compatible service.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from storage_pool.vault.backend import (
    IntegrityError,
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

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client
    from types_aiobotocore_s3.type_defs import (
        CompletedPartTypeDef,
        ListMultipartUploadsOutputTypeDef,
        ListObjectsV2OutputTypeDef,
    )

__all__ = ["S3Backend"]

T = TypeVar("T")
MiB = 1024 * 1024


class S3Backend(VaultBackend):
    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        part_size: int = 8 * MiB,
        max_concurrency: int = 4,
        timeout: float = 120.0,
    ) -> None:
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"s3 prefix must end with '/': {prefix!r}")
        if not 5 * MiB <= part_size <= 5 * 1024 * MiB or max_concurrency < 1:
            raise ValueError("part_size must be 5 MiB..5 GiB and max_concurrency at least 1")
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.region = region
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self._timeout = timeout
        self._credentials = (access_key_id, secret_access_key, session_token)
        self._stack: AsyncExitStack | None = None
        self._client: S3Client | None = None
        self._opening = asyncio.Lock()

    @property
    def description(self) -> str:
        where = f" prefix {self.prefix}" if self.prefix else ""
        at = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3 bucket {self.bucket}{where}{at}"

    async def _s3(self) -> S3Client:
        if self._client is not None:
            return self._client
        async with self._opening:
            if self._client is None:
                key, secret, token = self._credentials
                config = AioConfig(
                    retries={"total_max_attempts": 1},
                    connect_timeout=20,
                    read_timeout=self._timeout,
                    max_pool_connections=max(10, self.max_concurrency * 2),
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    s3={"addressing_style": "path"},
                )
                stack = AsyncExitStack()
                client = await stack.enter_async_context(
                    get_session().create_client(
                        "s3",
                        region_name=self.region,
                        endpoint_url=self.endpoint_url,
                        aws_access_key_id=key,
                        aws_secret_access_key=secret,
                        aws_session_token=token,
                        config=config,
                    )
                )
                self._stack, self._client = stack, client
        assert self._client is not None
        return self._client

    # ------------------------------------------------------------------ errors

    async def _call(self, name: str | None, make: Callable[[S3Client], Awaitable[T]]) -> T:
        s3 = await self._s3()
        try:
            async with asyncio.timeout(self._timeout):
                return await make(s3)
        except VaultBackendError:
            raise
        except ClientError as err:
            raise self._classify(name, err) from err
        except (BotoCoreError, OSError, TimeoutError) as err:
            kind = transient_kind(err) or "other"
            raise TransientError(self.description, name, _reason(err), kind=kind) from err

    def _classify(self, name: str | None, err: ClientError) -> VaultBackendError:
        error = err.response.get("Error", {})
        meta = err.response.get("ResponseMetadata", {})
        headers = meta.get("HTTPHeaders", {})
        status = meta.get("HTTPStatusCode")
        code = error.get("Code")
        # HEAD answers carry no body: the code is the bare status ("404"), so a HEAD on a
        # missing bucket reads as a missing object; other calls name NoSuchBucket.
        if code is not None and code.isdigit() and status is None:
            status = int(code)
        return from_status(
            self.description,
            name,
            _reason(err),
            status=status,
            code=code,
            retry_after=parse_retry_after(headers.get("retry-after")),
        )

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name)

    # ------------------------------------------------------------------ objects

    async def put(self, name: str, data: PutData, *, sha256: bytes | None = None) -> None:
        key = self._key(name)
        size = await asyncio.to_thread(data_size, data)
        source = BlockSource(data, self.part_size, backend=self.description, name=name, size=size)
        if size <= self.part_size:
            (only,) = [b async for b in source.blocks()]
            source.verify(sha256)
            answer = await self._call(
                name,
                lambda s3: s3.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=io.BytesIO(only.data),
                    ContentMD5=_b64(only.md5),
                ),
            )
            if not self._etag_matches(answer, only.md5):
                # The service ignored Content-MD5 and stored damaged bytes: take them away.
                await self._call(name, lambda s3: s3.delete_object(Bucket=self.bucket, Key=key))
                raise self._etag_error(name, answer, only)
            return
        created = await self._call(
            name, lambda s3: s3.create_multipart_upload(Bucket=self.bucket, Key=key)
        )
        upload_id = created["UploadId"]

        async def send(block: Block) -> CompletedPartTypeDef:
            number = block.index + 1
            answer = await self._call(
                name,
                lambda s3: s3.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=io.BytesIO(block.data),
                    ContentMD5=_b64(block.md5),
                ),
            )
            if not self._etag_matches(answer, block.md5):
                raise self._etag_error(name, answer, block)
            return {"ETag": answer["ETag"], "PartNumber": number}

        try:
            parts = await send_blocks(source, self.max_concurrency, send)
            source.verify(sha256)
            await self._call(
                name,
                lambda s3: s3.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                ),
            )
        except BaseException:
            await asyncio.shield(self._abort(key, upload_id))
            raise

    @staticmethod
    def _etag_matches(answer: Mapping[str, Any], md5: bytes) -> bool:
        """Whether the ETag of a PutObject/UploadPart answer is the MD5 we sent.

        S3 checks Content-MD5 itself; this second check catches services that ignore it
        (moto does). With SSE-KMS or SSE-C the ETag is not an MD5, so it proves nothing.
        """
        if answer.get("SSEKMSKeyId") or answer.get("SSECustomerAlgorithm"):
            return True
        etag = str(answer.get("ETag", "")).strip('"')
        if len(etag) != 32:
            return True
        return etag.lower() == md5.hex()

    def _etag_error(self, name: str, answer: Mapping[str, Any], block: Block) -> IntegrityError:
        return IntegrityError(
            self.description,
            name,
            f"service stored block {block.index} with MD5 {answer.get('ETag')}, sent "
            f"{block.md5.hex()}: damaged in transit",
            code="BadDigest",
        )

    async def _abort(self, key: str, upload_id: str) -> None:
        """Best effort: a failed abort leaves the upload to `abort_stale_uploads`."""
        with contextlib.suppress(VaultBackendError):
            await self._abort_upload(key, upload_id)

    async def _abort_upload(self, key: str, upload_id: str) -> None:
        await self._call(
            key,
            lambda s3: s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id),
        )

    async def _list_page(self, args: dict[str, Any]) -> ListObjectsV2OutputTypeDef:
        return await self._call(None, lambda s3: s3.list_objects_v2(**args))

    async def _list_uploads(self, args: dict[str, Any]) -> ListMultipartUploadsOutputTypeDef:
        return await self._call(None, lambda s3: s3.list_multipart_uploads(**args))

    async def create_if_absent(self, name: str, data: bytes) -> bool:
        key = self._key(name)
        source = BlockSource(
            data, max(len(data), 1), backend=self.description, name=name, size=len(data)
        )
        (only,) = [b async for b in source.blocks()]
        try:
            await self._call(
                name,
                lambda s3: s3.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    ContentMD5=_b64(only.md5),
                    IfNoneMatch="*",
                ),
            )
        except VaultBackendError as err:
            # 412: an object exists; 409: a racing conditional write won.
            if err.status in (409, 412):
                return False
            raise
        return True

    async def get(self, name: str) -> bytes:
        key = self._key(name)

        async def read(s3: S3Client) -> bytes:
            answer = await s3.get_object(Bucket=self.bucket, Key=key)
            async with answer["Body"] as body:
                return await body.read()

        return await self._call(name, read)

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        if (early := await empty_or_bad_range(self, name, offset, length)) is not None:
            return early
        key = self._key(name)
        wanted = f"bytes={offset}-{offset + length - 1}"

        async def read(s3: S3Client) -> bytes:
            answer = await s3.get_object(Bucket=self.bucket, Key=key, Range=wanted)
            async with answer["Body"] as body:
                return await body.read()

        try:
            return await self._call(name, read)
        except VaultBackendError as err:
            if err.status == 416 or err.code == "InvalidRange":
                return b""
            raise

    async def head(self, name: str) -> int | None:
        key = self._key(name)
        try:
            answer = await self._call(name, lambda s3: s3.head_object(Bucket=self.bucket, Key=key))
        except NotFound:
            return None
        return answer["ContentLength"]

    async def delete(self, name: str) -> None:
        key = self._key(name)
        # S3 answers 204 for a missing key too: idempotent by design.
        await self._call(name, lambda s3: s3.delete_object(Bucket=self.bucket, Key=key))

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        check_prefix(prefix)
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
            if token is not None:
                args["ContinuationToken"] = token
            page = await self._list_page(args)
            for item in page.get("Contents", []):
                yield ObjectInfo(item["Key"][len(self.prefix) :], item["Size"])
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    # ------------------------------------------------------------------ container

    async def ensure_container(self) -> None:
        args: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            await self._call(None, lambda s3: s3.create_bucket(**args))
        except VaultBackendError as err:
            if err.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                # BucketAlreadyExists: someone else's, unless we can see into it.
                if err.code == "BucketAlreadyExists" and not await self.container_exists():
                    raise
                return
            raise

    async def container_exists(self) -> bool:
        try:
            await self._call(None, lambda s3: s3.head_bucket(Bucket=self.bucket))
        except VaultBackendError as err:
            if err.status == 404:
                return False
            raise
        return True

    async def abort_stale_uploads(self, older_than: timedelta) -> int:
        cutoff = datetime.now(UTC) - older_than
        removed = 0
        key_marker: str | None = None
        id_marker: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
            if key_marker is not None:
                args["KeyMarker"] = key_marker
                args["UploadIdMarker"] = id_marker
            page = await self._list_uploads(args)
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < cutoff:
                    key, upload_id = upload["Key"], upload["UploadId"]
                    try:
                        await self._abort_upload(key, upload_id)
                    except NotFound:
                        continue  # completed or aborted meanwhile
                    removed += 1
            if not page.get("IsTruncated"):
                return removed
            key_marker = page.get("NextKeyMarker")
            id_marker = page.get("NextUploadIdMarker")

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _reason(err: BaseException) -> str:
    return " ".join(str(err).split())[:500] or type(err).__name__
