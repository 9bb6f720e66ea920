"""PackBuild: batches written in order on the pack's thread; a failure poisons later steps."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from storage_pool.framing import encode_chunk
from storage_pool.ids import ChunkId
from storage_pool.vault.crypto import ObjectCipher
from storage_pool.vault.format import ObjectKind
from storage_pool.vault.names import ObjectNamer
from storage_pool.vault.pack import PackReader, PackWriter
from storage_pool.vault.pack_build import PackBuild
from tests.unit.vault.held_writer import Hold, loop_turns


def _frames(count: int) -> list[tuple[ChunkId, bytes]]:
    out = []
    for i in range(count):
        data = (f"build-{i} ".encode() * 500) if i % 2 else os.urandom(3000 + i)
        chunk = encode_chunk(data, level=3)
        out.append((chunk.id, chunk.frame))
    return out


def _build(cipher: ObjectCipher, namer: ObjectNamer, scratch: Path) -> PackBuild:
    name = namer.new_name(ObjectKind.PACK)
    return PackBuild(name, lambda: PackWriter(cipher, name, scratch, fsync=False))


async def test_batches_land_in_order_without_waiting(
    cipher: ObjectCipher, namer: ObjectNamer, tmp_path: Path
) -> None:
    frames = _frames(12)
    build = _build(cipher, namer, tmp_path)
    writes = [build.add_many(frames[i : i + 4]) for i in range(0, 12, 4)]
    pack = await build.finish()
    assert [await w for w in writes] == [4, 4, 4]
    data = await asyncio.to_thread(pack.path.read_bytes)
    got = [(ref.chunk_id, frame) for ref, frame in PackReader(cipher, pack.name).iter_frames(data)]
    assert got == frames
    await asyncio.to_thread(build.discard)
    assert await asyncio.to_thread(os.listdir, tmp_path) == []


async def test_a_failed_batch_fails_finish_and_discard_leaves_nothing(
    cipher: ObjectCipher, namer: ObjectNamer, tmp_path: Path
) -> None:
    frames = _frames(3)
    build = _build(cipher, namer, tmp_path)
    build.add_many(frames[:1])
    bad = build.add_many([(frames[1][0], b"not a frame")])
    later = build.add_many(frames[2:])
    finished = build.finish()
    with pytest.raises(ValueError, match="frame"):
        await bad
    # The batch after the failure is not written and the pack is never sealed.
    with pytest.raises(ValueError, match="frame"):
        await later
    with pytest.raises(ValueError, match="frame"):
        await finished
    await asyncio.to_thread(build.discard)
    assert await asyncio.to_thread(os.listdir, tmp_path) == []


async def test_discard_waits_for_a_running_finish_then_removes_the_pack(
    cipher: ObjectCipher, namer: ObjectNamer, tmp_path: Path
) -> None:
    """The rename to ``.pack`` that a running finish does must not outlive discard."""
    name = namer.new_name(ObjectKind.PACK)
    with Hold("finish") as hold:
        writer_class = hold.writer_class()
        build = PackBuild(name, lambda: writer_class(cipher, name, tmp_path, fsync=False))
        build.add_many(_frames(2))
        finished = build.finish()
        await hold.reached_while(finished)
        discarded = asyncio.ensure_future(asyncio.to_thread(build.discard))
        await loop_turns()
        assert not discarded.done()
        hold.go.set()
        await discarded
    # The finish ran to its end (renamed), then discard removed what it made.
    assert (await finished).path.suffix == ".pack"
    assert await asyncio.to_thread(os.listdir, tmp_path) == []
