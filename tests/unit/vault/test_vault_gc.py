"""Online retention, soft delete, purge and repack on a real pool and a real folder vault,
with crashes injected into the real backend at every few mutations."""

from __future__ import annotations

import random
import shutil
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from storage_pool import ChunkerParams, PoolConfig, StoragePool
from storage_pool.ids import ChunkId, RecoveryPointId
from storage_pool.recovery_point import RecoveryPoint
from storage_pool.vault.backend import PutData, TransientError
from storage_pool.vault.catalog import ManifestStatus
from storage_pool.vault.folder import FolderBackend
from storage_pool.vault.reader import VaultReader
from storage_pool.vault.scratch import ScratchBudget
from storage_pool.vault.uploader import copy_recovery_point, rp_chunk_ids
from storage_pool.vault.vault import Vault, read_pack_trailer
from storage_pool.vault.vault_gc import (
    GRACE_NS,
    UndeleteError,
    apply_retention,
    purge,
    repack,
    undelete,
)
from tests.unit.pool.file_backup import backup_files, read_back
from tests.unit.pool.pool_opener import PoolOpener
from tests.unit.pool.sample_data import random_bytes
from tests.unit.vault.online_support import CountingBackend, KiB, create_folder_vault, open_vault

PACK = 256 * KiB
DAY = 86400 * 1_000_000_000
T0 = 1_700_000_000 * 1_000_000_000
SMALL_CHUNKS = PoolConfig(
    chunker=ChunkerParams(min_size=16 * KiB, avg_size=64 * KiB, max_size=256 * KiB)
)


class FaultyBackend(CountingBackend):
    """A real backend whose `fail_at`-th mutation (put or delete, from 0) and every later
    one raise, as a process killed at that point would leave the vault."""

    def __init__(self, inner: FolderBackend, fail_at: int | None = None) -> None:
        super().__init__(inner)
        self.fail_at = fail_at
        self.mutations = 0

    def _step(self, name: str) -> None:
        if self.fail_at is not None and self.mutations >= self.fail_at:
            raise TransientError(self.description, name, "injected crash", kind="reset")
        self.mutations += 1

    async def put(self, name: str, data: PutData, *, sha256: bytes | None = None) -> None:
        self._step(name)
        await self.inner.put(name, data, sha256=sha256)

    async def delete(self, name: str) -> None:
        self._step(name)
        await self.inner.delete(name)


def small_files(seed: int, count: int, size: int = 40 * KiB) -> dict[bytes, bytes]:
    return {f"f{i:02d}".encode(): random_bytes(size, seed * 1000 + i) for i in range(count)}


async def copy(pool: StoragePool, rp: RecoveryPoint, vault: Vault, tmp: Path) -> str:
    result = await copy_recovery_point(
        pool, rp, vault, tmp / "scratch", ScratchBudget(4 * PACK), pack_size=PACK,
        now_ns=lambda: T0,
    )  # fmt: skip
    return result.manifest_name


async def readable(
    root: Path, expected: Mapping[RecoveryPointId, Sequence[ChunkId]]
) -> dict[RecoveryPointId, ManifestStatus]:
    """Every RP in `expected` (rp id -> chunk ids) is listed live or pending by a reader
    with no cache, and every one of its chunks reads back verified; statuses by rp id."""
    vault = await open_vault(FolderBackend(root), None)
    reader = VaultReader(vault)
    listing = await reader.list_online_rps()
    assert not listing.refused
    found: dict[RecoveryPointId, ManifestStatus] = {}
    for orp in listing.rps:
        if orp.id not in expected or found.get(orp.id) is ManifestStatus.LIVE:
            continue
        if orp.status is not ManifestStatus.DELETED:
            one = VaultReader(vault)
            await one.load_locations(orp)
            ids = expected[orp.id]
            got = [cid async for cid, _ in one.read_frames(ids)]  # hashes checked
            assert sorted(got) == sorted(set(ids))
        found[orp.id] = orp.status
    await vault.close()
    return found


async def test_soft_delete_restorable_until_purge_then_exactly_unreferenced_removed(
    pools: PoolOpener, tmp_path: Path
) -> None:
    pool = await pools.create(config=SMALL_CHUNKS)
    root = tmp_path / "vault"
    vault = await create_folder_vault(root, tmp_path / "cache")
    files1, files2 = small_files(1, 8), small_files(2, 8)
    files2[b"f00"] = files1[b"f00"]  # shared with rp1
    rp1, _, _ = await backup_files(pool, "ds", files1)
    rp2, _, _ = await backup_files(pool, "ds", files2)
    m1 = await copy(pool, rp1, vault, tmp_path)
    await copy(pool, rp2, vault, tmp_path)

    result = await apply_retention(vault, {"ds": {rp2.id}}, now_ns=T0)
    assert result.deleted == (m1,)
    before = await vault.scan()
    status = await readable(root, {rp1.id: [], rp2.id: []})
    assert status == {rp1.id: ManifestStatus.DELETED, rp2.id: ManifestStatus.LIVE}

    # Within the grace nothing goes, and the deleted RP restores byte-identical.
    early = await purge(vault, now_ns=T0 + GRACE_NS - 1)
    assert early.manifests_purged == () and early.packs_deleted == ()
    fresh = await open_vault(FolderBackend(root), None)
    reader = VaultReader(fresh)
    orp1 = next(r for r in (await reader.list_online_rps()).rps if r.id == rp1.id)
    pool2 = await pools.create("pool2")
    await reader.restore_into_pool(pool2, orp1)
    assert await read_back(pool2, await pool2.get_recovery_point(rp1.id)) == files1
    await fresh.close()

    # Independently: the packs holding no chunk of rp2 and the segments rp2 does not pin.
    rp2_chunks = set(await rp_chunk_ids(pool, rp2))
    holds: dict[str, set[bytes]] = {}
    for pack, size in before.packs.items():
        holds[pack] = {bytes(b.chunk_id) for b in await read_pack_trailer(vault, pack, size)}
    expect_packs = {p for p, ids in holds.items() if not ids & {bytes(c) for c in rp2_chunks}}
    reader = VaultReader(vault)
    orp2 = next(r for r in (await reader.list_online_rps()).rps if r.id == rp2.id)
    pinned = {s.name for s in orp2.manifest.index_segments}
    expect_segments = set(before.segments) - pinned
    assert expect_packs  # rp1's own data

    done = await purge(vault, now_ns=T0 + GRACE_NS)
    assert done.manifests_purged == (m1,)
    assert set(done.packs_deleted) == expect_packs
    assert set(done.segments_deleted) == expect_segments
    after = await vault.scan()
    assert set(after.packs) == set(before.packs) - expect_packs
    assert m1 not in after.manifests
    assert await readable(root, {rp2.id: list(rp2_chunks)}) == {rp2.id: ManifestStatus.LIVE}
    assert set(vault.require_cache().packs()) == set(after.packs)

    # The cache forgot the purged packs: copying rp1 again re-uploads and restores whole.
    m1b = await copy(pool, rp1, vault, tmp_path)
    status = await readable(root, {rp1.id: await rp_chunk_ids(pool, rp1), rp2.id: []})
    assert status[rp1.id] is ManifestStatus.LIVE and m1b != m1
    again = await purge(vault, now_ns=T0 + 3 * GRACE_NS)
    assert again.packs_deleted == () and again.segments_deleted == ()
    await vault.close()


async def test_undelete_within_grace(pools: PoolOpener, tmp_path: Path) -> None:
    pool = await pools.create(config=SMALL_CHUNKS)
    vault = await create_folder_vault(tmp_path / "vault", tmp_path / "cache")
    rp1, _, _ = await backup_files(pool, "ds", small_files(1, 3))
    rp2, _, _ = await backup_files(pool, "ds", small_files(2, 3))
    m1 = await copy(pool, rp1, vault, tmp_path)
    await copy(pool, rp2, vault, tmp_path)
    with pytest.raises(ValueError, match="delete all"):
        await apply_retention(vault, {"ds": {"20000101T000000Z-00000000"}}, now_ns=T0)
    await apply_retention(vault, {"ds": {rp2.id}}, now_ns=T0)
    await undelete(vault, m1, now_ns=T0 + DAY)
    with pytest.raises(UndeleteError, match="not deleted"):
        await undelete(vault, m1, now_ns=T0 + DAY)
    done = await purge(vault, now_ns=T0 + 30 * DAY)
    assert done.manifests_purged == ()
    chunks = {rp1.id: await rp_chunk_ids(pool, rp1), rp2.id: await rp_chunk_ids(pool, rp2)}
    assert set((await readable(tmp_path / "vault", chunks)).values()) == {ManifestStatus.LIVE}
    await vault.close()


async def mostly_garbage_vault(
    pool: StoragePool, tmp: Path
) -> tuple[Path, dict[RecoveryPointId, list[ChunkId]], dict[bytes, bytes]]:
    """rp1: 24 small files; rp2 keeps 3 of them and adds one; rp1 soft-deleted at T0.
    After purge, each of rp1's packs is mostly garbage."""
    root = tmp / "vault"
    vault = await create_folder_vault(root, tmp / "cache")
    files1 = small_files(1, 24)
    files2 = {k: v for i, (k, v) in enumerate(sorted(files1.items())) if i % 8 == 0}
    files2[b"new"] = random_bytes(40 * KiB, 99)
    rp1, _, _ = await backup_files(pool, "ds", files1)
    rp2, _, _ = await backup_files(pool, "ds", files2)
    await copy(pool, rp1, vault, tmp)
    await copy(pool, rp2, vault, tmp)
    await apply_retention(vault, {"ds": {rp2.id}}, now_ns=T0)
    await vault.close()
    return root, {rp2.id: list(await rp_chunk_ids(pool, rp2))}, files2


async def test_repack_shrinks_and_keeps_every_live_rp(pools: PoolOpener, tmp_path: Path) -> None:
    pool = await pools.create(config=SMALL_CHUNKS)
    root, chunks, files2 = await mostly_garbage_vault(pool, tmp_path)
    vault = await open_vault(FolderBackend(root), tmp_path / "cache")
    await purge(vault, now_ns=T0 + GRACE_NS)
    before = await vault.scan()

    # A reader that listed before the repack keeps working after it, through the grace.
    old_reader = VaultReader(vault)
    (old_orp,) = [r for r in (await old_reader.list_online_rps()).rps]

    result = await repack(
        vault, tmp_path / "rscratch", ScratchBudget(4 * PACK), now_ns=T0 + GRACE_NS,
        pack_size=PACK,
    )  # fmt: skip
    assert result.packs_rewritten and len(result.manifests_rewritten) == 1
    assert len(result.packs_written) < len(result.packs_rewritten)
    assert not list((tmp_path / "rscratch").iterdir())
    await old_reader.load_locations(old_orp)
    assert len([c async for c, _ in old_reader.read_frames(chunks[old_orp.id])]) == len(
        set(chunks[old_orp.id])
    )
    assert await readable(root, chunks) == {old_orp.id: ManifestStatus.LIVE}

    again = await repack(
        vault, tmp_path / "rscratch", ScratchBudget(4 * PACK), now_ns=T0 + GRACE_NS
    )
    assert again.packs_rewritten == ()  # converged

    done = await purge(vault, now_ns=T0 + 2 * GRACE_NS)
    assert set(done.packs_deleted) == set(result.packs_rewritten)
    after = await vault.scan()
    assert len(after.packs) < len(before.packs)
    assert sum(after.packs.values()) < sum(before.packs.values())
    assert await readable(root, chunks) == {old_orp.id: ManifestStatus.LIVE}

    reader = VaultReader(await open_vault(FolderBackend(root), None))
    (orp,) = (await reader.list_online_rps()).rps
    pool2 = await pools.create("pool2")
    await reader.restore_into_pool(pool2, orp)
    assert await read_back(pool2, await pool2.get_recovery_point(orp.id)) == files2
    await reader.vault.close()
    await vault.close()


async def gc_round(vault: Vault, tmp: Path) -> None:
    await purge(vault, now_ns=T0 + GRACE_NS)
    await repack(
        vault, tmp / "rscratch", ScratchBudget(4 * PACK), now_ns=T0 + GRACE_NS, pack_size=PACK
    )
    await purge(vault, now_ns=T0 + 2 * GRACE_NS + DAY)


async def test_crash_at_any_mutation_then_rerun_converges(
    pools: PoolOpener, tmp_path: Path
) -> None:
    pool = await pools.create(config=SMALL_CHUNKS)
    template = tmp_path / "template"
    _, chunks, _ = await mostly_garbage_vault(pool, template)

    # A clean run counts the mutations and gives the converged shape.
    shutil.copytree(template, tmp_path / "clean")
    counting = FaultyBackend(FolderBackend(tmp_path / "clean" / "vault"))
    vault = await open_vault(counting, tmp_path / "clean" / "cache")
    await gc_round(vault, tmp_path / "clean")
    clean = await vault.scan()
    await vault.close()
    total = counting.mutations
    assert total > 10

    points = sorted(random.Random(5).sample(range(total), min(total, 12)))
    for fail_at in points:
        work = tmp_path / f"crash{fail_at}"
        shutil.copytree(template, work)
        faulty = FaultyBackend(FolderBackend(work / "vault"), fail_at=fail_at)
        vault = await open_vault(faulty, work / "cache")
        with pytest.raises(TransientError, match="injected crash"):
            await gc_round(vault, work)
        await vault.close()
        for leftover in (work / "rscratch").glob("*.pack"):  # a killed process leaves these
            assert leftover.is_file()
        status = await readable(work / "vault", chunks)
        assert status[next(iter(chunks))] is not ManifestStatus.DELETED, fail_at

        vault = await open_vault(FolderBackend(work / "vault"), work / "cache")
        await gc_round(vault, work)
        await gc_round(vault, work)  # idempotent once converged
        rerun = await vault.scan()
        await vault.close()
        assert len(rerun.packs) == len(clean.packs), fail_at
        assert sum(rerun.packs.values()) == sum(clean.packs.values()), fail_at
        assert len(rerun.catalogs) == 1
        assert await readable(work / "vault", chunks) == {
            next(iter(chunks)): ManifestStatus.LIVE
        }, fail_at
        shutil.rmtree(work)


def test_grace_is_fourteen_days() -> None:
    assert timedelta(microseconds=GRACE_NS // 1000) == timedelta(days=14)
