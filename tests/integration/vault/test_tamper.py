"""Tampering in the vault is detected and never yields wrong bytes (issue 5, "Tests").

One golden vault (a real pool, three online RPs whose files all carry a plaintext
marker) is built once on a folder. Each case copies it, object by object, into a fresh
folder, Azurite container or moto bucket, applies one attack with the backend's own
calls (what a cloud-side writer without the key can do), and then reads it back the
way a server does: `list_online_rps`, then for every RP still listed a restore into a
fresh pool and a `read_chunk` of every chunk. Each read either gives the source bytes
exactly or fails with a named error; each case also says which RPs must fail, so a
silently ignored attack fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from storage_pool import StoragePool, chunk_id_of
from storage_pool.ids import ChunkId
from storage_pool.vault.backend import NotFound, VaultBackend
from storage_pool.vault.catalog import ManifestStatus
from storage_pool.vault.folder import FolderBackend
from storage_pool.vault.format import DATA_PREFIX, HEADER_NAME, ObjectKind
from storage_pool.vault.format_errors import (
    HeaderTamperedError,
    RollbackError,
    TamperedObjectError,
    VaultFormatError,
    WeakKdfParamsError,
    WrongPassphraseError,
)
from storage_pool.vault.keys import KDF_TESTING, KdfParams
from storage_pool.vault.reader import OnlineListing, VaultReader
from storage_pool.vault.scratch import ScratchBudget
from storage_pool.vault.uploader import copy_recovery_point, rp_chunk_ids
from storage_pool.vault.vault import NoVaultError, Vault
from tests.integration.vault.conftest import KINDS, Target, make_target
from tests.unit.pool.file_backup import backup_files, read_back
from tests.unit.pool.pool_opener import PoolOpener
from tests.unit.vault.online_support import (
    MARKER,
    PASSPHRASE,
    KiB,
    tree,
)

PACK = 128 * KiB
# Cheap (tests), but above KDF_TESTING so a header can be downgraded below it.
GOLDEN_KDF = KdfParams(memory_kib=16, iterations=2, lanes=1)
SECRET_SOURCE = "ds-secret-name"

# Errors a read of a tampered vault may end with: integrity failures, and NotFound for
# an object the attacker deleted. Anything else (or wrong bytes) fails the test.
NAMED = (VaultFormatError, NotFound)
_POOL_NAMES = itertools.count()


@dataclass
class Golden:
    root: Path
    files: dict[str, dict[bytes, bytes]]  # rp id -> path -> content
    chunks: dict[str, list[ChunkId]]  # rp id -> every chunk it needs
    manifests: dict[str, str]  # rp id -> manifest object name
    order: list[str]  # rp ids, oldest first
    catalogs: list[tuple[str, bytes]]  # (name, sealed) after each commit, oldest first
    packs_of: dict[str, set[str]]  # rp id -> packs holding its chunks
    segments_of: dict[str, set[str]]  # rp id -> index segments its manifest pins
    pack_of_chunk: dict[ChunkId, tuple[str, int, int]]  # -> (pack, offset, length)
    names: dict[str, list[str]] = field(default_factory=dict)  # kind -> object names


async def _build_golden(base: Path) -> Golden:
    opener = PoolOpener(base)
    pool = await opener.create()
    vault = await Vault.create(
        FolderBackend(base / "vault"),
        PASSPHRASE,
        cache_dir=base / "cache",
        params=GOLDEN_KDF,
        min_params=KDF_TESTING,
    )
    files1 = tree(11, files=6, size=200 * KiB)
    files2 = dict(files1)
    files2[b"dir0/added-later.txt"] = MARKER + b"new lines of text\n" * 4000
    files3 = tree(13, files=4, size=150 * KiB)
    plan = [(SECRET_SOURCE, files1), (SECRET_SOURCE, files2), ("ds-other", files3)]
    golden = Golden(base / "vault", {}, {}, {}, [], [], {}, {}, {})
    try:
        for source, files in plan:
            rp, _, _ = await backup_files(pool, source, files)
            result = await copy_recovery_point(
                pool, rp, vault, base / "scratch", ScratchBudget(8 * PACK), pack_size=PACK
            )
            golden.order.append(rp.id)
            golden.files[rp.id] = files
            golden.chunks[rp.id] = await rp_chunk_ids(pool, rp)
            golden.manifests[rp.id] = result.manifest_name
            listing = await vault.scan()
            (catalog,) = listing.catalogs
            golden.catalogs.append((catalog, await vault.backend.get(catalog)))
        cache = vault.require_cache()
        for rp_id, ids in golden.chunks.items():
            where = cache.locate(ids)
            golden.packs_of[rp_id] = {loc.pack_name for loc in where.values()}
            for cid, loc in where.items():
                golden.pack_of_chunk[cid] = (loc.pack_name, loc.blob.offset, loc.blob.length)
            manifest, _ = await vault.open_manifest(golden.manifests[rp_id])
            golden.segments_of[rp_id] = {s.name for s in manifest.index_segments}
        listing = await vault.scan()
        golden.names = {
            "pack": sorted(listing.packs),
            "index": sorted(listing.segments),
            "manifest": sorted(listing.manifests),
            "catalog": sorted(listing.catalogs),
        }
    finally:
        await vault.close()
        await opener.close_all()
    assert len(golden.names["pack"]) >= 6 and len(golden.names["index"]) == 3
    return golden


@pytest.fixture(
    params=[
        "folder",
        # The attacks are on the vault format, which is the same over every backend; the
        # folder run keeps the default suite short and the cloud runs are in `make
        # test-slow`. test_untouched_copy_reads_back and the marker scan run on all three.
        pytest.param("azure", marks=pytest.mark.slow),
        pytest.param("s3", marks=pytest.mark.slow),
    ]
)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    return make_target(request.param, request, tmp_path)


@pytest.fixture(params=KINDS)
def any_target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    return make_target(request.param, request, tmp_path)


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Golden:
    return asyncio.run(_build_golden(tmp_path_factory.mktemp("golden")))


@asynccontextmanager
async def copied(target: Target, golden: Golden) -> AsyncIterator[VaultBackend]:
    """The golden vault copied object by object into a fresh container of `target`."""
    source = FolderBackend(golden.root)
    async with target.backend() as backend:
        await backend.ensure_container()
        async for info in source.list():
            await backend.put(info.name, await source.get(info.name))
        yield backend


@pytest.fixture
async def copy(target: Target, golden: Golden) -> AsyncIterator[VaultBackend]:
    async with copied(target, golden) as backend:
        yield backend


@pytest.fixture
async def copy_any(any_target: Target, golden: Golden) -> AsyncIterator[VaultBackend]:
    """As `copy`, on every backend in the default run."""
    async with copied(any_target, golden) as backend:
        yield backend


# --------------------------------------------------------------------------- reading


@dataclass
class Outcome:
    listing: OnlineListing
    restored: set[str]  # rp ids whose restore gave exactly the source files
    failed: dict[str, BaseException]  # rp id -> the named error


async def read_everything(vault: Vault, golden: Golden, pools: PoolOpener) -> Outcome:
    """List, then restore every listed RP into a fresh pool and read every chunk.

    Wrong bytes fail here; a failure must be a named error, and a failed restore must
    not leave the RP in the pool."""
    listing = await VaultReader(vault).list_online_rps()
    outcome = Outcome(listing, set(), {})
    for orp in listing.rps:
        expected = golden.files[orp.id]
        pool: StoragePool = await pools.create(f"pool-{next(_POOL_NAMES)}")
        reader = VaultReader(vault)
        try:
            await reader.restore_into_pool(pool, orp)
        except NAMED as err:
            outcome.failed[orp.id] = err
            assert orp.id not in [rp.id for rp in await pool.list_recovery_points()]
        else:
            restored = await pool.get_recovery_point(orp.id)
            assert await read_back(pool, restored) == expected, f"wrong bytes for {orp.id}"
            outcome.restored.add(orp.id)
        # Chunk by chunk: each read is the chunk itself or a named error.
        chunk_reader = VaultReader(vault)
        try:
            await chunk_reader.load_locations(orp)
        except NAMED:
            assert orp.id in outcome.failed
            continue
        chunk_failures = 0
        for cid in golden.chunks[orp.id]:
            try:
                data = await chunk_reader.read_chunk(cid)
            except NAMED:
                chunk_failures += 1
                continue
            assert chunk_id_of(data) == cid
        assert (chunk_failures > 0) == (orp.id in outcome.failed)
    return outcome


async def reopen(backend: VaultBackend, cache_dir: Path | None) -> Vault:
    # The server's floor is what the vault was made with: a header below it is refused.
    return await Vault.open(backend, PASSPHRASE, cache_dir=cache_dir, min_params=GOLDEN_KDF)


async def primed(backend: VaultBackend, tmp_path: Path) -> Vault:
    """A server that has seen the vault's head catalog (its trusted generation)."""
    vault = await reopen(backend, tmp_path / "server-cache")
    listing = await VaultReader(vault).list_online_rps()
    assert len(listing.rps) == 3
    return vault


def users(golden: Golden, of: dict[str, set[str]], names: set[str]) -> set[str]:
    return {rp for rp, held in of.items() if held & names}


# --------------------------------------------------------------------------- attacks


async def swap(backend: VaultBackend, a: str, b: str) -> None:
    data_a, data_b = await backend.get(a), await backend.get(b)
    assert data_a != data_b
    await backend.put(a, data_b)
    await backend.put(b, data_a)


async def rewrite(backend: VaultBackend, name: str, change: Callable[[bytes], bytes]) -> None:
    await backend.put(name, change(await backend.get(name)))


def flip(at: int) -> Callable[[bytes], bytes]:
    def change(data: bytes) -> bytes:
        out = bytearray(data)
        out[at] ^= 0x40
        return bytes(out)

    return change


async def test_untouched_copy_reads_back(
    copy_any: VaultBackend, golden: Golden, pools: PoolOpener, tmp_path: Path
) -> None:
    vault = await reopen(copy_any, tmp_path / "cache")
    outcome = await read_everything(vault, golden, pools)
    assert outcome.restored == set(golden.order) and not outcome.failed
    assert [r.id for r in outcome.listing.rps] == golden.order
    await vault.close()


async def test_no_plaintext_marker_or_names_in_any_object(
    copy_any: VaultBackend, golden: Golden
) -> None:
    copy = copy_any
    leaks = [MARKER, SECRET_SOURCE.encode(), b"ds-other", b"added-later", b"file1.bin", b"dir0/"]
    leaks += [rp.encode() for rp in golden.order]
    seen = 0
    async for info in copy.list():
        data = await copy.get(info.name)
        seen += 1
        for leak in leaks:
            assert leak not in data, (leak, info.name)
            assert leak.decode() not in info.name
    assert seen == 1 + sum(len(v) for v in golden.names.values())


async def test_swapped_packs_fail_the_rps_using_them(
    copy: VaultBackend, golden: Golden, pools: PoolOpener, tmp_path: Path
) -> None:
    # One pack only the third RP uses, one the first two share.
    a = min(golden.packs_of[golden.order[2]] - golden.packs_of[golden.order[0]])
    b = min(golden.packs_of[golden.order[0]])
    await swap(copy, a, b)
    vault = await reopen(copy, tmp_path / "cache")
    outcome = await read_everything(vault, golden, pools)
    assert set(outcome.failed) == users(golden, golden.packs_of, {a, b}) == set(golden.order)
    assert all(isinstance(e, TamperedObjectError) for e in outcome.failed.values())
    await vault.close()


async def test_truncated_pack(
    copy: VaultBackend, golden: Golden, pools: PoolOpener, tmp_path: Path
) -> None:
    pack = min(golden.packs_of[golden.order[2]])
    await rewrite(copy, pack, lambda data: data[: len(data) // 2])
    vault = await reopen(copy, tmp_path / "cache")
    outcome = await read_everything(vault, golden, pools)
    assert set(outcome.failed) == users(golden, golden.packs_of, {pack})
    assert golden.order[2] in outcome.failed and outcome.restored
    assert all(isinstance(e, TamperedObjectError) for e in outcome.failed.values())
    await vault.close()


async def test_flipped_byte_in_a_blob(
    copy: VaultBackend, golden: Golden, pools: PoolOpener, tmp_path: Path
) -> None:
    cid = golden.chunks[golden.order[0]][-1]  # a file chunk of the first RP
    pack, offset, length = golden.pack_of_chunk[cid]
    await rewrite(copy, pack, flip(offset + length // 2))
    vault = await reopen(copy, tmp_path / "cache")
    outcome = await read_everything(vault, golden, pools)
    expected = {rp for rp, ids in golden.chunks.items() if cid in ids}
    assert set(outcome.failed) == expected and golden.order[0] in expected
    assert all(isinstance(e, TamperedObjectError) for e in outcome.failed.values())
    await vault.close()


async def test_deleted_pack(
    copy: VaultBackend, golden: Golden, pools: PoolOpener, tmp_path: Path
) -> None:
    pack = min(golden.packs_of[golden.order[1]])
    await copy.delete(pack)
    vault = await reopen(copy, tmp_path / "cache")
    outcome = await read_everything(vault, golden, pools)
    assert set(outcome.failed) == users(golden, golden.packs_of, {pack})
    assert all(isinstance(e, NotFound) for e in outcome.failed.values())
    await vault.close()


async def test_deleted_and_swapped_index_segments(
    copy: VaultBackend, golden: Golden, pools: PoolOpener, tmp_path: Path
) -> None:
    # Each job wrote one segment for its new packs; later manifests pin older ones too.
    seen: set[str] = set()
    written = []
    for rp in golden.order:
        (new,) = golden.segments_of[rp] - seen
        written.append(new)
        seen |= golden.segments_of[rp]
    first, second, third = written
    kept = await copy.get(first)
    await copy.delete(first)
    vault = await reopen(copy, tmp_path / "cache")
    outcome = await read_everything(vault, golden, pools)
    assert set(outcome.failed) == users(golden, golden.segments_of, {first})
    assert all(isinstance(e, NotFound) for e in outcome.failed.values())
    await vault.close()

    # Put the first segment back: every RP pins it, and which of a missing and a swapped
    # segment a reader meets first depends on the order of random names.
    await copy.put(first, kept)
    await swap(copy, second, third)
    vault = await reopen(copy, tmp_path / "cache-2")
    outcome = await read_everything(vault, golden, pools)
    swapped = users(golden, golden.segments_of, {second, third})
    assert set(outcome.failed) == swapped == set(golden.order[1:])
    assert all(isinstance(e, TamperedObjectError) for e in outcome.failed.values())
    assert outcome.restored == {golden.order[0]}
    await vault.close()


async def test_swapped_manifests_are_refused(
    copy: VaultBackend, golden: Golden, pools: PoolOpener, tmp_path: Path
) -> None:
    m1, m2 = golden.manifests[golden.order[0]], golden.manifests[golden.order[1]]
    await swap(copy, m1, m2)
    vault = await reopen(copy, tmp_path / "cache")
    outcome = await read_everything(vault, golden, pools)
    assert [r.id for r in outcome.listing.rps] == [golden.order[2]]
    assert {name for name, _ in outcome.listing.refused} == {m1, m2}
    assert outcome.restored == {golden.order[2]}
    with pytest.raises(TamperedObjectError):
        await VaultReader(vault).open_manifest(m1)
    await vault.close()


async def test_deleted_manifest_is_reported_missing(
    copy: VaultBackend, golden: Golden, pools: PoolOpener, tmp_path: Path
) -> None:
    m1 = golden.manifests[golden.order[0]]
    await copy.delete(m1)
    vault = await reopen(copy, tmp_path / "cache")
    outcome = await read_everything(vault, golden, pools)
    assert [e.name for e in outcome.listing.missing] == [m1]
    assert outcome.restored == set(golden.order[1:]) and not outcome.failed
    await vault.close()


async def _commit_deletion(vault: Vault, manifest: str, *, purge: bool) -> None:
    """What retention does: the next catalog generation soft-deletes (or purges) an RP."""
    listing = await vault.scan()
    head_name, head = await vault.head(listing)
    catalog = head.deleting([manifest], now_ns=time.time_ns(), purge=purge)
    name = vault.namer.new_name(ObjectKind.CATALOG)
    await vault.put_sealed(name, catalog.seal(vault.cipher, name))
    await vault.backend.delete(head_name)
    if purge:
        await vault.backend.delete(manifest)


async def test_purged_manifest_put_back_is_a_rollback(
    copy: VaultBackend, golden: Golden, pools: PoolOpener, tmp_path: Path
) -> None:
    m1 = golden.manifests[golden.order[0]]
    old = await copy.get(m1)
    vault = await primed(copy, tmp_path)
    await _commit_deletion(vault, golden.manifests[golden.order[1]], purge=False)
    await _commit_deletion(vault, m1, purge=True)
    await copy.put(m1, old)  # the attacker keeps a copy and puts it back

    for server in (vault, await reopen(copy, tmp_path / "fresh-cache")):
        outcome = await read_everything(server, golden, pools)
        assert [name for name, _ in outcome.listing.refused] == [m1]
        assert "put back" in outcome.listing.refused[0][1]
        statuses = {r.id: r.status for r in outcome.listing.rps}
        assert statuses == {
            golden.order[1]: ManifestStatus.DELETED,
            golden.order[2]: ManifestStatus.LIVE,
        }
        assert outcome.restored == set(golden.order[1:])
        with pytest.raises(RollbackError):
            await VaultReader(server).open_manifest(m1)
        await server.close()


async def test_older_catalog_restored(
    copy: VaultBackend, golden: Golden, pools: PoolOpener, tmp_path: Path
) -> None:
    vault = await primed(copy, tmp_path)
    head_name = golden.catalogs[-1][0]
    old_name, old = golden.catalogs[-2]
    await copy.delete(head_name)
    await copy.put(old_name, old)
    with pytest.raises(RollbackError, match="rolled back"):
        await VaultReader(vault).list_online_rps()
    await vault.close()

    # A fresh server has no high-water mark and trusts the older catalog: the newest RP
    # is then pending (its sequence is above the catalog's), and every RP still reads.
    fresh = await reopen(copy, tmp_path / "fresh-cache")
    outcome = await read_everything(fresh, golden, pools)
    assert outcome.listing.catalog_generation == 2
    assert outcome.listing.rps[-1].status is ManifestStatus.PENDING
    assert outcome.restored == set(golden.order)
    await fresh.close()


async def test_every_catalog_deleted_after_it_was_seen(
    copy: VaultBackend, golden: Golden, tmp_path: Path
) -> None:
    vault = await primed(copy, tmp_path)
    for name in golden.names["catalog"]:
        await copy.delete(name)
    with pytest.raises(RollbackError):
        await VaultReader(vault).list_online_rps()
    await vault.close()


async def test_catalog_tampered_or_replaced_by_another_kind(
    copy: VaultBackend, golden: Golden, tmp_path: Path
) -> None:
    (head,) = golden.names["catalog"]
    await rewrite(copy, head, flip(40))
    vault = await reopen(copy, tmp_path / "cache")
    with pytest.raises(TamperedObjectError):
        await VaultReader(vault).list_online_rps()
    await copy.put(head, await copy.get(golden.manifests[golden.order[0]]))
    with pytest.raises(TamperedObjectError):
        await VaultReader(vault).list_online_rps()
    await vault.close()


async def test_foreign_object_is_ignored(
    copy: VaultBackend, golden: Golden, pools: PoolOpener, tmp_path: Path
) -> None:
    stray = f"{DATA_PREFIX}ab/{secrets.token_hex(32)}"
    await copy.put(stray, secrets.token_bytes(1000))
    vault = await reopen(copy, tmp_path / "cache")
    assert (await vault.scan()).foreign == [stray]
    outcome = await read_everything(vault, golden, pools)
    assert outcome.restored == set(golden.order)
    await vault.close()


# --------------------------------------------------------------------------- header


def _edit_header(change: Callable[[dict[str, object]], None]) -> Callable[[bytes], bytes]:
    def edit(raw: bytes) -> bytes:
        doc = json.loads(raw)
        change(doc)
        return json.dumps(doc).encode()

    return edit


def _kdf(key: str, value: int) -> Callable[[dict[str, object]], None]:
    def change(doc: dict[str, object]) -> None:
        kdf = doc["kdf"]
        assert isinstance(kdf, dict)
        kdf[key] = value

    return change


def _kdf_salt(doc: dict[str, object]) -> None:
    kdf = doc["kdf"]
    assert isinstance(kdf, dict)
    kdf["salt"] = base64.b64encode(bytes(16)).decode()


HEADER_ATTACKS: dict[str, tuple[Callable[[dict[str, object]], None], type[Exception]]] = {
    "state": (lambda doc: doc.__setitem__("state", "deprovisioned"), HeaderTamperedError),
    "generation": (lambda doc: doc.__setitem__("generation", 7), HeaderTamperedError),
    "kdf-raised": (_kdf("iterations", 3), WrongPassphraseError),
    "kdf-below-floor": (_kdf("iterations", 1), WeakKdfParamsError),
    "kdf-salt": (_kdf_salt, WrongPassphraseError),
    "vault-id": (lambda doc: doc.__setitem__("vault_id", "00" * 16), WrongPassphraseError),
}


@pytest.mark.parametrize("attack", sorted(HEADER_ATTACKS))
async def test_tampered_header_is_refused(copy: VaultBackend, attack: str) -> None:
    change, error = HEADER_ATTACKS[attack]
    await rewrite(copy, HEADER_NAME, _edit_header(change))
    with pytest.raises(error):
        await reopen(copy, None)


async def test_missing_header(copy: VaultBackend) -> None:
    await copy.delete(HEADER_NAME)
    with pytest.raises(NoVaultError):
        await reopen(copy, None)
