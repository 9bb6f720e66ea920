"""Online backup and cloud reads on a real pool and a real folder vault."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from storage_pool import ChunkerParams, PoolConfig, StoragePool
from storage_pool.vault.catalog import ManifestStatus
from storage_pool.vault.folder import FolderBackend
from storage_pool.vault.format_errors import WrongPassphraseError
from storage_pool.vault.reader import VaultReader
from storage_pool.vault.scratch import ScratchBudget, scratch_usage
from storage_pool.vault.uploader import copy_recovery_point, rp_chunk_ids
from storage_pool.vault.vault import Vault
from tests.unit.pool.file_backup import backup_files, read_back
from tests.unit.pool.pool_opener import PoolOpener
from tests.unit.vault.held_writer import CheckedBudget, Hold, loop_turns
from tests.unit.vault.online_support import (
    MARKER,
    CountingBackend,
    MiB,
    create_folder_vault,
    open_vault,
    tree,
    vault_files,
)

PACK = 256 * 1024


@pytest.fixture
async def pool(pools: PoolOpener) -> StoragePool:
    return await pools.create()


async def _vault(tmp_path: Path, *, fail_after: int | None = None) -> tuple[Vault, CountingBackend]:
    created = await create_folder_vault(tmp_path / "vault")
    await created.close()
    backend = CountingBackend(FolderBackend(tmp_path / "vault"), fail_after=fail_after)
    return await open_vault(backend, tmp_path / "cache"), backend


async def test_copy_then_incremental_uploads_only_new_chunks(
    pool: StoragePool, tmp_path: Path
) -> None:
    vault, backend = await _vault(tmp_path)
    first_files = tree(1)
    rp1, _, _ = await backup_files(pool, "ds", first_files)
    budget = ScratchBudget(4 * PACK)
    r1 = await copy_recovery_point(pool, rp1, vault, tmp_path / "scratch", budget, pack_size=PACK)
    assert r1.chunks_uploaded == r1.chunks_total > 0
    assert not list((tmp_path / "scratch").iterdir())

    second_files = dict(first_files)
    second_files[b"dir0/new.bin"] = MARKER + b"fresh data " * 5000
    rp2, _, _ = await backup_files(pool, "ds", second_files)
    puts_before = len(backend.puts)
    r2 = await copy_recovery_point(pool, rp2, vault, tmp_path / "scratch", budget, pack_size=PACK)
    new_pack_bytes = sum(size for name, size in backend.puts[puts_before:])
    assert 0 < r2.chunks_uploaded < r2.chunks_total / 2
    assert r2.bytes_uploaded < r1.bytes_uploaded / 2
    assert new_pack_bytes < r1.bytes_uploaded / 2
    assert r2.catalog_generation == r1.catalog_generation + 1

    again = await copy_recovery_point(
        pool, rp2, vault, tmp_path / "scratch", budget, pack_size=PACK
    )
    assert again.already_online and again.manifest_name == r2.manifest_name

    listing = await VaultReader(vault).list_online_rps()
    assert [r.id for r in listing.rps] == [rp1.id, rp2.id]
    assert all(r.status is ManifestStatus.LIVE for r in listing.rps)
    assert not listing.missing and not listing.refused
    await vault.close()


async def test_rebuilt_cache_matches_and_reseeds_a_new_pool(
    pools: PoolOpener, tmp_path: Path
) -> None:
    pool = await pools.create("pool")
    vault, _ = await _vault(tmp_path)
    files = tree(2)
    rp, _, _ = await backup_files(pool, "ds", files)
    await copy_recovery_point(
        pool, rp, vault, tmp_path / "scratch", ScratchBudget(4 * PACK), pack_size=PACK
    )
    cache = vault.require_cache()
    ids = [b.chunk_id for pack in cache.packs() for b in cache.blobs_of(pack)]
    before = cache.locate(ids)
    assert len(before) == len(ids) > 0
    (tmp_path / "cache" / "vault-cache.sqlite").unlink()
    await vault.close()

    # Alternate server: a fresh cache dir and a fresh pool, the vault and passphrase only.
    fresh = await open_vault(FolderBackend(tmp_path / "vault"), tmp_path / "cache2")
    report = await fresh.rebuild_cache()
    assert report.packs_adopted == 0 and report.packs_indexed > 0
    after = fresh.require_cache().locate(list(before))
    assert after == before

    reader = VaultReader(fresh)
    listing = await reader.list_online_rps()
    (orp,) = listing.rps
    new_pool = await pools.create("pool2")
    result = await reader.restore_into_pool(new_pool, orp)
    assert result.chunks_fetched > 0
    restored = await new_pool.get_recovery_point(rp.id)
    assert restored == rp
    assert await read_back(new_pool, restored) == files
    await fresh.close()


async def test_scratch_never_exceeds_its_bound(pools: PoolOpener, tmp_path: Path) -> None:
    small_chunks = PoolConfig(
        chunker=ChunkerParams(min_size=16 * 1024, avg_size=64 * 1024, max_size=256 * 1024)
    )
    pool = await pools.create(config=small_chunks)
    vault, backend = await _vault(tmp_path)
    files = tree(3, files=8, size=MiB)
    rp, _, _ = await backup_files(pool, "ds", files)
    bound = 2 * 1024 * 1024
    budget = ScratchBudget(bound)
    scratch = tmp_path / "scratch"
    samples: list[tuple[int, int]] = []

    def sample(_: object = None) -> None:
        samples.append((budget.in_use, scratch_usage(scratch)))

    backend.on_put = sample  # also sampled while each upload is in progress

    result = await copy_recovery_point(
        pool, rp, vault, scratch, budget, pack_size=MiB, parallelism=2, progress=sample
    )
    assert result.bytes_uploaded > 3 * bound  # the bound was actually exercised
    assert len(samples) > 10
    assert budget.high_water <= bound
    assert all(in_use <= bound and on_disk <= in_use for in_use, on_disk in samples)
    assert budget.in_use == 0 and not list(scratch.iterdir())
    await vault.close()


async def test_interrupted_upload_resumes_without_reuploading(
    pool: StoragePool, tmp_path: Path
) -> None:
    vault, backend = await _vault(tmp_path, fail_after=3)
    files = tree(4, files=8, size=400 * 1024)
    rp, _, _ = await backup_files(pool, "ds", files)
    budget = ScratchBudget(4 * PACK)
    with pytest.raises(Exception, match="injected outage"):
        await copy_recovery_point(
            pool, rp, vault, tmp_path / "scratch", budget, pack_size=PACK, parallelism=1
        )
    assert not list((tmp_path / "scratch").iterdir()) and budget.in_use == 0
    held = {name for name, _ in backend.puts}
    assert len(held) == 3
    backend.fail_after = None
    result = await copy_recovery_point(
        pool, rp, vault, tmp_path / "scratch", budget, pack_size=PACK
    )
    again = [name for name, _ in backend.puts[3:] if name in held]
    assert again == []
    assert 0 < result.chunks_uploaded < result.chunks_total

    reader = VaultReader(vault)
    (orp,) = (await reader.list_online_rps()).rps
    await reader.load_locations(orp)
    # Every chunk of the RP reads back from the vault through the pinned segments.
    for cid in await rp_chunk_ids(pool, rp):
        assert await reader.read_chunk(cid) == await pool.get_chunk(cid)
    await vault.close()


async def test_no_plaintext_in_vault_and_wrong_passphrase(
    pool: StoragePool, tmp_path: Path
) -> None:
    vault, _ = await _vault(tmp_path)
    rp, _, _ = await backup_files(pool, "ds-secret-name", tree(5))
    await copy_recovery_point(
        pool, rp, vault, tmp_path / "scratch", ScratchBudget(4 * PACK), pack_size=PACK
    )
    await vault.close()
    for path in vault_files(tmp_path / "vault"):
        data = await asyncio.to_thread(path.read_bytes)
        assert MARKER not in data, path
        assert b"ds-secret-name" not in data and b"file1.bin" not in data, path
    with pytest.raises(WrongPassphraseError):
        await open_vault(FolderBackend(tmp_path / "vault"), None, "a wrong passphrase, long")


async def _one_pack_job(
    pool: StoragePool, vault: Vault, scratch: Path, budget: ScratchBudget
) -> asyncio.Task[object]:
    rp, _, _ = await backup_files(pool, "ds", tree(6, files=2, size=20 * 1024))
    return asyncio.create_task(
        copy_recovery_point(pool, rp, vault, scratch, budget, pack_size=PACK, parallelism=1),
        name="online-backup-under-test",
    )


async def test_cancel_while_a_failed_upload_discards_its_pack_waits_for_the_file(
    pool: StoragePool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the put of a pack failed and its upload task was deleting the file on
    a thread when abort cancelled the task; the task released the pack's scratch bytes
    and the job ended with the ``.pack`` file still in scratch (seen under load in
    test_interrupted_upload_resumes_without_reuploading)."""
    vault, _ = await _vault(tmp_path, fail_after=0)
    scratch = tmp_path / "scratch"
    budget = CheckedBudget(4 * PACK, scratch)
    with Hold("abort") as hold:
        monkeypatch.setattr("storage_pool.vault.uploader.PackWriter", hold.writer_class())
        job = await _one_pack_job(pool, vault, scratch, budget)
        await hold.reached_while(job)  # put failed; the discard is parked before unlink
        job.cancel()
        await loop_turns()
        assert not job.done()
        assert [p.suffix for p in scratch.iterdir()] == [".pack"] and budget.in_use > 0
        hold.go.set()
        with pytest.raises(asyncio.CancelledError):
            await job
    assert not list(scratch.iterdir()) and budget.in_use == 0
    assert budget.overruns == []
    await vault.close()


async def test_a_second_cancel_while_abort_waits_for_a_finishing_pack_still_cleans_up(
    pool: StoragePool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: abort waited for the upload tasks without protection, so a second
    cancellation (a timeout around the job, a server stop after a Stop-Job) ended the
    job while a pack's thread was still sealing it: the thread then renamed the file to
    ``.pack`` after the job had returned, and its bytes stayed reserved."""
    vault, _ = await _vault(tmp_path)
    scratch = tmp_path / "scratch"
    budget = CheckedBudget(4 * PACK, scratch)
    with Hold("finish") as hold:
        monkeypatch.setattr("storage_pool.vault.uploader.PackWriter", hold.writer_class())
        job = await _one_pack_job(pool, vault, scratch, budget)
        await hold.reached_while(job)  # the pack's thread is parked before its rename
        job.cancel()
        await loop_turns()
        job.cancel()
        await loop_turns()
        assert not job.done()
        assert [p.suffix for p in scratch.iterdir()] == [".partial"] and budget.in_use > 0
        hold.go.set()
        with pytest.raises(asyncio.CancelledError):
            await job
    assert not list(scratch.iterdir()) and budget.in_use == 0
    assert budget.overruns == []
    await vault.close()
