"""Bit rot: damage chunk files on disk, and check what verify reports, quarantines and heals.

The pool holds several recovery points that share chunks (whole blobs, edited blobs, one
in another data source) plus the chunks of an aborted session. The damage is chosen from
the manifests, so the expected report (which chunk, corrupt or missing, which RPs it
breaks) is computed independently of verify.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from storage_pool import (
    ChunkerParams,
    ChunkId,
    ChunkNotFoundError,
    Entry,
    EntryType,
    PoolConfig,
    RecoveryPointId,
    StoragePool,
    VerifyReport,
)
from storage_pool.chunk_store import QUARANTINE_DIR
from storage_pool.pool import Durability

KiB = 1024
CONFIG = PoolConfig(chunker=ChunkerParams(min_size=1 * KiB, avg_size=4 * KiB, max_size=16 * KiB))
HEADER = 16  # framing.py: magic, version, codec, reserved, two lengths
CODEC_RAW = 0
SEED = 20_240_601

Files = dict[bytes, bytes]


def _text(rng: random.Random, size: int) -> bytes:
    words = [rng.randbytes(rng.randint(1, 5)).hex().encode() for _ in range(50)]
    return b" ".join(rng.choices(words, k=size // 4 + 1))[:size]


def _edited(rng: random.Random, blob: bytes) -> bytes:
    at = rng.randrange(len(blob))
    return blob[:at] + rng.randbytes(40) + blob[at + 40 :]


def backups() -> tuple[list[tuple[str, Files]], Files]:
    """(data source, files) per recovery point, and the files of the aborted session."""
    rng = random.Random(SEED)
    a, b = rng.randbytes(200 * KiB), rng.randbytes(120 * KiB)
    text = _text(rng, 150 * KiB)
    plan = [
        ("host-a", {b"a": a, b"b": b, b"t": text}),
        ("host-a", {b"a": a, b"b2": _edited(rng, b), b"n": rng.randbytes(60 * KiB)}),
        ("host-a", {b"a2": _edited(rng, a), b"t": text, b"tiny": b"x"}),
        ("host-b", {b"b": b, b"x": rng.randbytes(80 * KiB)}),
    ]
    return plan, {b"orphan": rng.randbytes(30 * KiB)}


@dataclass(slots=True)
class Scene:
    pool: StoragePool
    contents: dict[RecoveryPointId, Files] = field(default_factory=dict)
    plaintext: dict[ChunkId, bytes] = field(default_factory=dict)
    refs: dict[ChunkId, set[RecoveryPointId]] = field(default_factory=dict)
    manifest_chunks: set[ChunkId] = field(default_factory=set)


async def store_files(
    pool: StoragePool, data_source: str, files: Files, scene: Scene
) -> list[Entry]:
    chunker = pool.new_chunker()
    entries = []
    async with pool.session(data_source) as s:
        for path, data in sorted(files.items()):
            pieces = [bytes(v) for v in chunker.cut(data)]
            ids = await s.put_data(pieces)
            scene.plaintext.update(zip(ids, pieces, strict=True))
            entries.append(
                Entry(
                    path=path,
                    type=EntryType.FILE,
                    size=len(data),
                    chunk_ids=tuple(ids),
                    chunk_sizes=tuple(map(len, pieces)),
                )
            )
        if data_source == "aborted":
            return entries  # leaving without commit aborts
        await s.add_entries(entries)
        rp = await s.commit()
    scene.contents[rp.id] = files
    return entries


async def build(path: Path, durability: Durability) -> Scene:
    pool = await StoragePool.create(path, CONFIG, durability=durability)
    scene = Scene(pool)
    plan, orphan = backups()
    for data_source, files in plan:
        await store_files(pool, data_source, files, scene)
    await store_files(pool, "aborted", orphan, scene)
    # Who references what, read from the manifests.
    refs: dict[ChunkId, set[RecoveryPointId]] = defaultdict(set)
    for rp in await pool.list_recovery_points():
        scene.manifest_chunks.update(rp.manifest_chunks)
        for cid in rp.manifest_chunks:
            refs[cid].add(rp.id)
        async for e in pool.iter_entries(rp):
            for cid in e.chunk_ids:
                refs[cid].add(rp.id)
    scene.refs = dict(refs)
    return scene


@dataclass(frozen=True, slots=True)
class Damage:
    flipped: tuple[ChunkId, ...]
    truncated: tuple[ChunkId, ...]
    deleted: tuple[ChunkId, ...]
    padded: tuple[ChunkId, ...]
    orphan: ChunkId

    @property
    def corrupt(self) -> set[ChunkId]:
        return {*self.flipped, *self.truncated, *self.padded, self.orphan}

    @property
    def all(self) -> set[ChunkId]:
        return self.corrupt | set(self.deleted)


def damage(scene: Scene) -> Damage:
    """Flip a payload byte of stored-raw chunks (so the plaintext surely changes), cut
    short, delete, pad; shared and unshared chunks alike; plus one unreferenced chunk."""
    store = scene.pool.store
    rng = random.Random(SEED + 1)

    def frame(cid: ChunkId) -> bytes:
        return store.path_of(cid).read_bytes()

    data_chunks = sorted(c for c in scene.refs if c not in scene.manifest_chunks)
    raw = [c for c in data_chunks if frame(c)[4] == CODEC_RAW and len(frame(c)) > HEADER]
    shared = [c for c in raw if len(scene.refs[c]) > 1]
    alone = [c for c in raw if len(scene.refs[c]) == 1]
    packed = [c for c in data_chunks if frame(c)[4] != CODEC_RAW]
    assert len(shared) >= 4 and len(alone) >= 4 and packed, "the scene lacks variety"
    sh, al = rng.sample(shared, 4), rng.sample(alone, 4)
    flipped = [sh[0], sh[1], al[0]]
    truncated = [sh[2], al[1], rng.choice(packed)]  # to half, to 10 bytes, by one byte
    deleted = [sh[3], al[2]]
    padded = [al[3]]
    orphan = next(c for c in scene.plaintext if c not in scene.refs)

    for cid in [*flipped, orphan]:
        buf = bytearray(frame(cid))
        buf[HEADER + rng.randrange(len(buf) - HEADER)] ^= 1 << rng.randrange(8)
        store.path_of(cid).write_bytes(bytes(buf))
    for k, cid in enumerate(truncated):
        whole = frame(cid)
        store.path_of(cid).write_bytes(whole[: (len(whole) // 2, 10, len(whole) - 1)[k]])
    for cid in deleted:
        store.path_of(cid).unlink()
    for cid in padded:
        with store.path_of(cid).open("ab") as f:
            f.write(b"\0garbage appended by a misbehaving tool\n")
    return Damage(tuple(flipped), tuple(truncated), tuple(deleted), tuple(padded), orphan)


def assert_reports_exactly(
    report: VerifyReport, scene: Scene, hurt: Damage, *, repaired: bool = False
) -> None:
    assert set(report.problems) == hurt.all, (
        f"false positives {set(report.problems) - hurt.all},"
        f" missed {hurt.all - set(report.problems)}"
    )
    for cid, problem in report.problems.items():
        assert problem.kind == ("missing" if cid in hurt.deleted else "corrupt"), problem
        assert len(problem.recovery_points) == len(set(problem.recovery_points)), problem
        assert set(problem.recovery_points) == scene.refs.get(cid, set()), problem
        assert problem.repaired is repaired, problem
    assert not report.manifest_errors
    assert not report.foreign_entries
    broken = set().union(*(scene.refs.get(c, set()) for c in hurt.all))
    assert report.broken_recovery_points == (set() if repaired else broken)


async def read_back(pool: StoragePool, rp_id: RecoveryPointId) -> Files:
    rp = await pool.get_recovery_point(rp_id)
    out: Files = {}
    async for e in pool.iter_entries(rp):
        out[e.path] = b"".join([b async for b in pool.read_file(e)])
    return out


async def assert_all_read(scene: Scene) -> None:
    rps = await scene.pool.list_recovery_points()
    assert {rp.id for rp in rps} == set(scene.contents)
    for rp_id, files in scene.contents.items():
        got = await read_back(scene.pool, rp_id)
        assert got.keys() == files.keys(), rp_id
        assert all(got[p] == files[p] for p in files), f"RP {rp_id} reads back different bytes"


async def assert_clean(pool: StoragePool) -> None:
    v = await pool.verify()
    assert (v.problems, v.manifest_errors, v.foreign_entries) == ({}, {}, []), v
    assert v.clean


@pytest.mark.parametrize("durability", [Durability.FILESYSTEM, Durability.FILE])
async def test_verify_names_exactly_the_damaged_chunks_and_a_backup_heals_them(
    tmp_path: Path, durability: Durability
) -> None:
    """Guards against verify missing damage (flipped bit, truncation, padding, deletion)
    or reporting sound chunks (false positives), naming the wrong RPs for a chunk, leaving a
    damaged file in place (a backup would dedup against it forever) or an index row for
    it (the backup would skip re-uploading it)."""
    scene = await build(tmp_path / "pool", durability)
    pool = scene.pool
    try:
        await assert_clean(pool)
        hurt = damage(scene)

        report = await pool.verify()
        assert_reports_exactly(report, scene, hurt)
        quarantine = pool.root / QUARANTINE_DIR
        moved = [p.name.split(".")[0] for p in quarantine.iterdir()]
        assert sorted(moved) == sorted(c.hex() for c in hurt.corrupt)
        assert not any(pool.store.path_of(c).exists() for c in hurt.all)

        # A second verify sees them missing now; the index agrees, so backups re-upload.
        again = await pool.verify()
        assert {c for c, p in again.problems.items() if p.kind == "missing"} == hurt.all - {
            hurt.orphan  # unreferenced: once moved aside, nothing misses it
        }
        heal_files = {b"healed": b"".join(scene.plaintext[c] for c in sorted(hurt.all))}
        async with pool.session("healer") as s:
            assert set(await s.missing(sorted(hurt.all))) == hurt.all
            ids = await s.put_data([scene.plaintext[c] for c in sorted(hurt.all)])
            assert s.stats.put.new_chunks == len(hurt.all)
            await s.add_entries(
                [
                    Entry(
                        path=b"healed",
                        type=EntryType.FILE,
                        size=len(heal_files[b"healed"]),
                        chunk_ids=tuple(ids),
                        chunk_sizes=tuple(len(scene.plaintext[c]) for c in ids),
                    )
                ]
            )
            rp = await s.commit()
        scene.contents[rp.id] = heal_files

        await assert_clean(pool)
        await assert_all_read(scene)
    finally:
        await pool.close()


class PoolSource:
    """The repair hook backed by another real pool with the same data."""

    def __init__(self, pool: StoragePool) -> None:
        self.pool = pool
        self.asked: list[ChunkId] = []

    async def fetch_chunk(self, cid: ChunkId) -> bytes | None:
        self.asked.append(cid)
        try:
            return await self.pool.get_chunk(cid)
        except ChunkNotFoundError:
            return None


async def test_verify_repairs_from_another_pool(tmp_path: Path) -> None:
    """Guards against the repair hook not being asked for every damaged or missing chunk,
    or writing back something that does not make the pool whole (the next verify must be
    clean and every RP read back byte-identical)."""
    scene = await build(tmp_path / "damaged", Durability.FILESYSTEM)
    twin = await build(tmp_path / "twin", Durability.FILE)
    try:
        hurt = damage(scene)
        source = PoolSource(twin.pool)
        report = await scene.pool.verify(repair_from=source)
        assert_reports_exactly(report, scene, hurt, repaired=True)
        assert sorted(source.asked) == sorted(hurt.all)
        await assert_clean(scene.pool)
        await assert_all_read(scene)
    finally:
        await scene.pool.close()
        await twin.pool.close()


async def test_sampled_verify_checks_about_half(tmp_path: Path) -> None:
    """Guards against `sample` being ignored (a full re-read of a large pool on every
    scheduled run) or not reproducible for a given seed."""
    scene = await build(tmp_path / "pool", Durability.FILESYSTEM)
    try:
        full = await scene.pool.verify()
        half = await scene.pool.verify(sample=0.5, seed=1)
        same = await scene.pool.verify(sample=0.5, seed=1)
        assert full.checked_chunks == full.chunk_files > 100
        assert 0.35 < half.checked_chunks / full.chunk_files < 0.65
        assert same.checked_chunks == half.checked_chunks
        assert half.clean and same.clean
    finally:
        await scene.pool.close()
