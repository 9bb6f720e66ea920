"""The vault backend contract (storage_pool/vault/backend.py), run against every backend:
folder, Azure on a real Azurite, S3 on a real moto server.

Faults are injected around the real parts: a `FaultProxy` between the SDK and the service
(503s, resets, a flipped byte in transit, an upload cut mid-stream), wrong credentials on
Azurite, a deleted container, a tmpfs that fills up.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from storage_pool.vault.azure import AzureBackend
from storage_pool.vault.backend import (
    AuthError,
    ContainerGone,
    IntegrityError,
    NotFound,
    ObjectInfo,
    PutData,
    Throttled,
    TransientError,
    VaultBackend,
    VaultBackendError,
)
from storage_pool.vault.folder import TMP_PREFIX, FolderBackend
from storage_pool.vault.retry import Retrying, RetryPolicy
from storage_pool.vault.s3 import S3Backend
from tests.integration.vault.conftest import MiB, Target
from tests.support.azurite import ACCOUNT, ACCOUNT_KEY, Azurite
from tests.support.fault_proxy import FaultProxy
from tests.support.tmpfs import mounted_tmpfs
from tests.unit.vault.online_support import DelegatingBackend

T = TypeVar("T")
LARGE = 20 * MiB + 12345  # several Azure blocks (4 MiB) and S3 parts (5 MiB)


def payload(size: int, seed: int = 0) -> bytes:
    return (
        (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]
        if size < 4096
        else (os.urandom(size))
    )


async def names(vault: VaultBackend, prefix: str = "") -> list[ObjectInfo]:
    return sorted([info async for info in vault.list(prefix)])


class Recorder:
    """Fake sleep for `Retrying`: records each delay, never waits."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.retries: list[tuple[str, type[BaseException]]] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def on_retry(self, what: str, err: TransientError, delay: float) -> None:
        self.retries.append((what, type(err)))

    def wrap(self, inner: VaultBackend) -> Retrying:
        return Retrying(
            inner,
            RetryPolicy(initial=0.01, maximum=0.1, budget=60),
            sleep=self.sleep,
            on_retry=self.on_retry,
        )


class Flaky(DelegatingBackend):
    """Wraps a real backend; the next ``errors`` calls of put/get raise those errors first."""

    def __init__(self, inner: VaultBackend, errors: list[VaultBackendError]) -> None:
        super().__init__(inner)
        self.errors = errors
        self.calls = 0

    async def _maybe_fail(self, call: Callable[[], Awaitable[T]]) -> T:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return await call()

    async def put(self, name: str, data: PutData, *, sha256: bytes | None = None) -> None:
        await self._maybe_fail(lambda: self.inner.put(name, data, sha256=sha256))

    async def get(self, name: str) -> bytes:
        return await self._maybe_fail(lambda: self.inner.get(name))


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("size", [0, 1, 1000, LARGE], ids=["empty", "1B", "1KB", "20MiB"])
async def test_put_get_round_trip(backend: VaultBackend, size: int) -> None:
    data = payload(size, seed=size)
    await backend.put("packs/ab12cd", data, sha256=hashlib.sha256(data).digest())
    assert await backend.get("packs/ab12cd") == data
    assert await backend.head("packs/ab12cd") == size


async def test_put_from_file(backend: VaultBackend, tmp_path: Path) -> None:
    data = payload(LARGE)
    source = tmp_path / "pack.bin"
    source.write_bytes(data)
    await backend.put("packs/from-file", source, sha256=hashlib.sha256(data).digest())
    assert await backend.get("packs/from-file") == data


async def test_put_replaces_whole_object(backend: VaultBackend) -> None:
    await backend.put("idx/seg", payload(LARGE, 1))
    smaller = payload(1000, 2)
    await backend.put("idx/seg", smaller)
    assert await backend.get("idx/seg") == smaller


async def test_get_range(backend: VaultBackend) -> None:
    data = payload(LARGE)
    await backend.put("packs/r", data)
    assert await backend.get_range("packs/r", 0, 10) == data[:10]
    assert await backend.get_range("packs/r", 5 * MiB - 3, 7) == data[5 * MiB - 3 : 5 * MiB + 4]
    assert await backend.get_range("packs/r", LARGE - 5, 100) == data[-5:]
    assert await backend.get_range("packs/r", LARGE, 10) == b""
    assert await backend.get_range("packs/r", 100, 0) == b""
    with pytest.raises(NotFound):
        await backend.get_range("packs/missing", 0, 10)
    with pytest.raises(ValueError):
        await backend.get_range("packs/r", -1, 10)


async def test_list_with_prefix(backend: VaultBackend) -> None:
    for name in ["header", "packs/aa01", "packs/aa02", "packs/b3", "index/aa01", "packsx"]:
        await backend.put(name, name.encode())
    everything = await names(backend)
    assert [i.name for i in everything] == sorted(
        ["header", "index/aa01", "packs/aa01", "packs/aa02", "packs/b3", "packsx"]
    )
    assert await names(backend, "packs/") == [
        ObjectInfo("packs/aa01", 10),
        ObjectInfo("packs/aa02", 10),
        ObjectInfo("packs/b3", 8),
    ]
    assert [i.name for i in await names(backend, "packs/aa")] == ["packs/aa01", "packs/aa02"]
    assert [i.name for i in await names(backend, "pack")] == [
        "packs/aa01",
        "packs/aa02",
        "packs/b3",
        "packsx",
    ]
    assert await names(backend, "nothing/") == []


async def test_head_and_delete_idempotent(backend: VaultBackend) -> None:
    assert await backend.head("packs/x1") is None
    await backend.put("packs/x1", b"12345")
    assert await backend.head("packs/x1") == 5
    await backend.delete("packs/x1")
    await backend.delete("packs/x1")
    await backend.delete("packs/never-existed")
    assert await backend.head("packs/x1") is None
    with pytest.raises(NotFound):
        await backend.get("packs/x1")
    assert await names(backend) == []


async def test_create_if_absent(backend: VaultBackend) -> None:
    assert await backend.create_if_absent("header", b"first") is True
    assert await backend.create_if_absent("header", b"second") is False
    assert await backend.get("header") == b"first"
    await backend.put("locks/l1", b"held")
    assert await backend.create_if_absent("locks/l1", b"mine") is False
    assert await backend.get("locks/l1") == b"held"


async def test_bad_names_rejected_before_any_io(backend: VaultBackend) -> None:
    for bad in ["", "/abs", "a//b", "../up", "a/../b", ".hidden", "@fan", "sp ace", "x" * 600]:
        with pytest.raises(ValueError):
            await backend.put(bad, b"x")


# --------------------------------------------------------------------------- integrity


@pytest.mark.parametrize("size", [1000, LARGE], ids=["single", "blocks"])
async def test_sha256_mismatch_commits_nothing(backend: VaultBackend, size: int) -> None:
    await backend.put("packs/keep", b"old version")
    with pytest.raises(IntegrityError, match="SHA-256"):
        await backend.put("packs/keep", payload(size), sha256=hashlib.sha256(b"other").digest())
    with pytest.raises(IntegrityError):
        await backend.put("packs/new", payload(size), sha256=b"\0" * 32)
    assert await backend.get("packs/keep") == b"old version"
    assert await backend.head("packs/new") is None
    assert [i.name for i in await names(backend)] == ["packs/keep"]


@pytest.mark.parametrize("size", [200_000, LARGE], ids=["single", "blocks"])
async def test_byte_flipped_in_transit_is_integrity_error_never_retried(
    network_target: Target, proxy: FaultProxy, size: int
) -> None:
    """The service checks each request's Content-MD5, so a byte damaged after the client
    hashed it is refused; the retry wrapper passes the IntegrityError straight through."""
    recorder = Recorder()
    async with recorder.wrap(network_target.backend(via=proxy)) as vault:
        await vault.ensure_container()
        proxy.flip_next_body(100_000)
        with pytest.raises(IntegrityError):
            await vault.put("packs/flipped", payload(size))
        assert proxy.applied == {"flip": 1}
        assert recorder.retries == []
        assert await vault.head("packs/flipped") is None
        assert await names(vault) == []


# --------------------------------------------------------------------------- interruption


async def test_upload_cut_mid_stream_leaves_nothing_visible(
    network_target: Target, proxy: FaultProxy
) -> None:
    async with network_target.backend(via=proxy) as vault:
        await vault.ensure_container()
        await vault.put("packs/cut", b"previous")
        proxy.cut_next_body(1 * MiB, count=5)
        with pytest.raises(TransientError):
            await vault.put("packs/cut", payload(LARGE))
        assert proxy.applied["cut"] >= 1
        assert await vault.get("packs/cut") == b"previous"
        proxy.cut_next_body(1 * MiB, count=5)
        with pytest.raises(TransientError):
            await vault.put("packs/cut-new", payload(LARGE))
        proxy.disarm()
        assert [i.name for i in await names(vault)] == ["packs/cut"]


async def test_folder_full_disk_leaves_nothing_visible(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "mnt", 8 * MiB) as mnt:
        async with FolderBackend(mnt / "vault") as vault:
            await vault.ensure_container()
            await vault.put("packs/keep", b"previous")
            with pytest.raises(VaultBackendError, match="No space"):
                await vault.put("packs/keep", payload(LARGE))
            assert await vault.get("packs/keep") == b"previous"
            leftovers = [p for p in (mnt / "vault").rglob("*") if p.name.startswith(TMP_PREFIX)]
            assert leftovers == []


# --------------------------------------------------------------------------- retries


async def test_retry_wrapper_retries_transient_not_permanent(backend: VaultBackend) -> None:
    recorder = Recorder()
    where = backend.description
    flaky = Flaky(
        backend,
        [
            TransientError(where, "a", "connection reset by peer", kind="reset"),
            Throttled(where, "a", "slow down", retry_after=7.0, status=503),
        ],
    )
    vault = recorder.wrap(flaky)
    await vault.put("a", b"data")
    assert flaky.calls == 3
    assert recorder.retries == [("put", TransientError), ("put", Throttled)]
    assert recorder.sleeps[1] >= 7.0  # Retry-After honoured
    assert await vault.get("a") == b"data"

    for permanent in [
        IntegrityError(where, "a", "md5 mismatch"),
        AuthError(where, "a", "403 AuthenticationFailed", status=403),
        NotFound(where, "a", "no such object"),
        ContainerGone(where, None, "ContainerNotFound"),
    ]:
        flaky.errors = [permanent]
        flaky.calls = 0
        recorder.retries.clear()
        with pytest.raises(type(permanent)):
            await vault.get("a")
        assert flaky.calls == 1
        assert recorder.retries == []


async def test_retry_gives_up_when_budget_spent(backend: VaultBackend) -> None:
    where = backend.description
    flaky = Flaky(backend, [TransientError(where, "a", "timeout", kind="timeout")] * 50)
    ticks = iter([0.0, 100.0])  # the first failure comes 100 s after the call started
    vault = Retrying(
        flaky,
        RetryPolicy(initial=1, maximum=1, budget=60),
        sleep=Recorder().sleep,
        monotonic=lambda: next(ticks),
    )
    with pytest.raises(TransientError):
        await vault.put("a", b"x")
    assert flaky.calls == 1


async def test_retry_through_real_503_and_resets(network_target: Target, proxy: FaultProxy) -> None:
    recorder = Recorder()
    async with recorder.wrap(network_target.backend(via=proxy)) as vault:
        await vault.ensure_container()
        data = payload(LARGE)
        proxy.fail_next(2, retry_after=3)
        await vault.put("packs/busy", data)
        assert proxy.applied["fail"] == 2
        # The canned 503 closes its connection; aiohttp sometimes re-sends on a fresh one
        # by itself, so the wrapper sees one or two of the 503s, never anything else.
        kinds = [kind for _, kind in recorder.retries]
        assert kinds in ([Throttled], [Throttled, Throttled]), kinds
        assert min(recorder.sleeps) >= 3
        proxy.reset_next(3)
        assert await vault.get("packs/busy") == data
        assert proxy.applied["reset"] == 3
        # aiohttp itself re-sends an idempotent request once on a reused connection.
        assert [kind for what, kind in recorder.retries if what == "get"] >= [TransientError]


async def test_unretried_503_is_throttled_with_retry_after(
    network_target: Target, proxy: FaultProxy
) -> None:
    async with network_target.backend(via=proxy) as vault:
        await vault.ensure_container()
        proxy.fail_next(1, retry_after=12)
        with pytest.raises(Throttled) as caught:
            await vault.head("packs/x")
        assert caught.value.retry_after == 12
        assert caught.value.status == 503


async def test_service_down_is_transient_connect(network_target: Target) -> None:
    stopped = FaultProxy(*(network_target.upstream or ("127.0.0.1", 1)))
    await stopped.start()
    await stopped.stop()  # nothing listens on its port any more
    async with network_target.backend(via=stopped) as vault:
        with pytest.raises(TransientError) as caught:
            await vault.head("packs/x")
    assert caught.value.kind == "connect"


# --------------------------------------------------------------------------- auth, container


async def test_azure_wrong_key_and_expired_sas_are_auth_errors(azurite: Azurite) -> None:
    container = "authtest" + os.urandom(4).hex()
    async with AzureBackend(container, connection_string=azurite.connection_string()) as good:
        await good.ensure_container()
        await good.put("header", b"h")
    wrong_key = "A" * 86 + "=="
    async with AzureBackend(
        container, connection_string=azurite.connection_string(key=wrong_key)
    ) as bad:
        with pytest.raises(AuthError) as caught:
            await bad.get("header")
        assert caught.value.status == 403
        recorder = Recorder()
        with pytest.raises(AuthError):
            await recorder.wrap(bad).get("header")
        assert recorder.retries == []
    expired = generate_container_sas(
        ACCOUNT,
        container,
        account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(read=True, write=True, list=True),
        expiry=datetime.now(UTC) - timedelta(hours=1),
    )
    async with AzureBackend(
        container, account_url=azurite.blob_endpoint, credential=expired
    ) as sas:
        with pytest.raises(AuthError):
            await sas.get("header")
        with pytest.raises(AuthError):
            await sas.put("header2", b"x")
    valid = generate_container_sas(
        ACCOUNT,
        container,
        account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(read=True, write=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    async with AzureBackend(container, account_url=azurite.blob_endpoint, credential=valid) as sas:
        assert await sas.get("header") == b"h"


async def _delete_container(target: Target, vault: VaultBackend) -> None:
    if isinstance(vault, FolderBackend):
        shutil.rmtree(vault.root)
    elif isinstance(vault, AzureBackend):
        await vault._container.delete_container()
    elif isinstance(vault, S3Backend):
        s3 = await vault._s3()
        async for info in vault.list():
            await s3.delete_object(Bucket=vault.bucket, Key=vault.prefix + info.name)
        await s3.delete_bucket(Bucket=vault.bucket)


async def test_container_gone(target: Target, backend: VaultBackend) -> None:
    assert await backend.container_exists() is True
    await backend.put("packs/p", b"x")
    await _delete_container(target, backend)
    assert await backend.container_exists() is False
    with pytest.raises(ContainerGone):
        await backend.get("packs/p")
    with pytest.raises(ContainerGone):
        await backend.put("packs/p", b"y")
    with pytest.raises(ContainerGone):
        await names(backend)
    await backend.ensure_container()
    assert await backend.head("packs/p") is None


async def test_missing_container_is_not_created_by_put(target: Target) -> None:
    async with target.backend() as vault:
        assert await vault.container_exists() is False
        with pytest.raises(ContainerGone):
            await vault.put("packs/p", b"x")


# --------------------------------------------------------------------------- stale uploads


async def test_abort_stale_uploads(backend: VaultBackend) -> None:
    await backend.put("packs/done", b"committed")
    if isinstance(backend, S3Backend):
        s3 = await backend._s3()
        key = backend.prefix + "packs/open"
        upload = await s3.create_multipart_upload(Bucket=backend.bucket, Key=key)
        await s3.upload_part(
            Bucket=backend.bucket,
            Key=key,
            UploadId=upload["UploadId"],
            PartNumber=1,
            Body=payload(5 * MiB),
        )
    elif isinstance(backend, AzureBackend):
        blob = backend._container.get_blob_client("packs/open")
        await blob.stage_block("0001", payload(1000))
    elif isinstance(backend, FolderBackend):
        (backend.root / "packs" / "@op").mkdir(parents=True)
        (backend.root / "packs" / "@op" / f"{TMP_PREFIX}deadbeef").write_bytes(b"partial")
    if not isinstance(backend, S3Backend):  # moto reports every upload as started in 2010
        assert await backend.abort_stale_uploads(timedelta(hours=1)) == 0  # too young
    assert await backend.abort_stale_uploads(timedelta(0)) == 1
    assert await backend.abort_stale_uploads(timedelta(0)) == 0
    if isinstance(backend, S3Backend):
        s3 = await backend._s3()
        listed = await s3.list_multipart_uploads(Bucket=backend.bucket)
        assert listed.get("Uploads", []) == []
    assert [i.name for i in await names(backend)] == ["packs/done"]
    assert await backend.get("packs/done") == b"committed"
