"""DataPlaneClient against a real TLS aiohttp server: error classification and retries."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from agent.http_client import DataPlaneClient, DataPlaneError, RetryPolicy
from server.tls import load_or_create_tls
from storage_pool import StoragePool, framing
from storage_pool.errors import IntegrityError
from storage_pool.ids import ChunkId, chunk_id_of
from tests.integration.agent.conftest import make_identity
from tests.integration.agent.fake_dataplane import FakeDataPlane, Restore
from tests.support.mqtt import free_port

FAST = RetryPolicy(budget=10.0, first=0.01, cap=0.05)


def client_for(
    dp: FakeDataPlane, *, credential: str = "secret", retry: RetryPolicy = FAST
) -> DataPlaneClient:
    ident = dataclasses.replace(make_identity(dp.url, dp.ca_pem, 1883), credential=credential)
    return DataPlaneClient(ident, retry=retry)


async def test_transient_503_is_retried(dataplane: FakeDataPlane) -> None:
    dataplane.faults["missing"] = [503, 502, 504]
    async with client_for(dataplane) as client:
        info = await client.open_session("job-1")
        cid = chunk_id_of(b"x")
        assert await client.missing(info.session_id, [cid]) == [cid]
    assert dataplane.calls["missing"] == 4


async def test_dropped_connection_is_retried_for_idempotent_calls(
    dataplane: FakeDataPlane,
) -> None:
    dataplane.faults["missing"] = [0]
    async with client_for(dataplane) as client:
        info = await client.open_session("job-1")
        assert await client.missing(info.session_id, [chunk_id_of(b"y")])
    assert dataplane.calls["missing"] == 2


async def test_permanent_4xx_is_not_retried_and_carries_server_error(
    dataplane: FakeDataPlane,
) -> None:
    dataplane.faults["missing"] = [409]
    async with client_for(dataplane) as client:
        info = await client.open_session("job-1")
        with pytest.raises(DataPlaneError) as caught:
            await client.missing(info.session_id, [chunk_id_of(b"z")])
    assert caught.value.status == 409
    assert caught.value.error == "injected 409"
    assert not caught.value.transient
    assert dataplane.calls["missing"] == 1


async def test_bad_credential_is_401(dataplane: FakeDataPlane) -> None:
    async with client_for(dataplane, credential="wrong") as client:
        with pytest.raises(DataPlaneError) as caught:
            await client.open_session("job-1")
    assert caught.value.status == 401
    assert caught.value.error == "bad agent credential"


async def test_ambiguous_failure_of_add_entries_is_not_retried(dataplane: FakeDataPlane) -> None:
    """Regression guard: re-sending entries after a lost answer would append them twice."""
    dataplane.faults["entries"] = [502]
    async with client_for(dataplane) as client:
        info = await client.open_session("job-1")
        with pytest.raises(DataPlaneError) as caught:
            await client.add_entries(info.session_id, b"")
    assert caught.value.status == 502 and caught.value.transient
    assert dataplane.calls["entries"] == 1


async def test_503_add_entries_is_retried(dataplane: FakeDataPlane) -> None:
    dataplane.faults["entries"] = [503]
    async with client_for(dataplane) as client:
        info = await client.open_session("job-1")
        assert await client.add_entries(info.session_id, b"") == 0
    assert dataplane.calls["entries"] == 2


async def test_connection_refused_is_transient_and_gives_up_after_budget(
    dataplane: FakeDataPlane,
) -> None:
    ident = make_identity(f"https://127.0.0.1:{free_port()}", dataplane.ca_pem, 1883)
    policy = RetryPolicy(budget=0.3, first=0.01, cap=0.05)
    async with DataPlaneClient(ident, retry=policy) as client:
        with pytest.raises(DataPlaneError) as caught:
            await client.open_session("job-1")
    assert caught.value.status is None
    assert caught.value.transient and not caught.value.sent
    assert "cannot connect" in str(caught.value)


async def test_untrusted_server_certificate_is_permanent(
    dataplane: FakeDataPlane, tmp_path: Path
) -> None:
    other_ca = load_or_create_tls(tmp_path / "other").ca_pem.decode()
    ident = make_identity(dataplane.url, other_ca, 1883)
    async with DataPlaneClient(ident, retry=FAST) as client:
        with pytest.raises(DataPlaneError, match="not trusted") as caught:
            await client.open_session("job-1")
    assert not caught.value.transient
    assert dataplane.calls["open"] == 0


async def _stored(pool: StoragePool, datas: list[bytes]) -> tuple[str, list[ChunkId]]:
    session = pool.session("ds1")
    ids = await session.put_data(datas)
    rp = await session.commit()
    return rp.id, ids


async def test_restore_chunks_resumes_and_verifies(
    dataplane: FakeDataPlane, pool: StoragePool
) -> None:
    datas = [os.urandom(3000) for _ in range(5)]
    rp_id, ids = await _stored(pool, datas)
    dataplane.restores["r1"] = Restore(rp_id)
    dataplane.faults["restore_chunks"] = [0, 503]
    async with client_for(dataplane) as client:
        got = {cid: data async for cid, data in client.restore_chunks("r1", ids)}
    assert got == dict(zip(ids, datas, strict=True))
    assert dataplane.calls["restore_chunks"] == 3


async def test_restore_chunks_corrupt_frame_is_integrity_error(
    dataplane: FakeDataPlane, pool: StoragePool
) -> None:
    rp_id, ids = await _stored(pool, [b"a" * 5000, b"b" * 5000])
    dataplane.restores["r1"] = Restore(rp_id)
    dataplane.corrupt.add(ids[0])
    async with client_for(dataplane) as client:
        with pytest.raises(IntegrityError, match=ids[0].hex()):
            async for _ in client.restore_chunks("r1", ids):
                pass


async def test_restore_chunks_unknown_job_is_404(dataplane: FakeDataPlane) -> None:
    async with client_for(dataplane) as client:
        with pytest.raises(DataPlaneError) as caught:
            async for _ in client.restore_chunks("nope", [chunk_id_of(b"q")]):
                pass
    assert caught.value.status == 404


def test_frame_helper_roundtrip() -> None:
    frame = framing.encode(b"hello" * 100, 3)
    assert framing.decode_verified(frame, chunk_id_of(b"hello" * 100)) == b"hello" * 100
