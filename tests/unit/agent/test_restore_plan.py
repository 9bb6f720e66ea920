"""The pure parts of a restore: renamed names, hole arithmetic, selection, hardlinks."""

from __future__ import annotations

import pytest

from agent.restore_meta import restored_name
from agent.restore_plan import Planner, Step, chunks_to_fetch, data_ranges
from storage_pool import ChunkId, Entry, EntryType


@pytest.mark.parametrize(
    ("name", "n", "expected"),
    [
        (b"report.pdf", 1, b"report.restored-1.pdf"),
        (b"archive.tar.gz", 2, b"archive.tar.restored-2.gz"),
        (b"Makefile", 1, b"Makefile.restored-1"),
        (b".bashrc", 3, b".bashrc.restored-3"),
        (b"trailing.", 1, b"trailing..restored-1"),
        (b"caf\xe9.txt", 1, b"caf\xe9.restored-1.txt"),
        (b"x." + b"e" * 17, 1, b"x." + b"e" * 17 + b".restored-1"),
    ],
)
def test_restored_name_keeps_the_extension(name: bytes, n: int, expected: bytes) -> None:
    assert restored_name(name, n) == expected


@pytest.mark.parametrize(
    ("offset", "length", "holes", "expected"),
    [
        (0, 100, (), [(0, 100)]),
        (0, 100, ((20, 30),), [(0, 20), (50, 100)]),
        (100, 100, ((0, 150),), [(150, 200)]),
        (100, 100, ((0, 300),), []),
        (100, 100, ((120, 10), (150, 10), (190, 50)), [(100, 120), (130, 150), (160, 190)]),
        (100, 100, ((0, 10), (300, 10)), [(100, 200)]),
    ],
)
def test_data_ranges_skip_holes(
    offset: int, length: int, holes: tuple[tuple[int, int], ...], expected: list[tuple[int, int]]
) -> None:
    assert data_ranges(offset, length, holes) == expected


def _file(path: bytes, sizes: tuple[int, ...], **kw: object) -> Entry:
    return Entry(
        path=path,
        type=EntryType.FILE,
        size=sum(sizes),
        chunk_ids=tuple(ChunkId(bytes([i]) * 32) for i in range(len(sizes))),
        chunk_sizes=sizes,
        **kw,  # type: ignore[arg-type]
    )


def test_chunks_wholly_inside_a_hole_are_not_fetched() -> None:
    entry = _file(b"f", (10, 10, 10, 10), holes=((5, 25),))
    assert chunks_to_fetch(entry) == ((0, 3), (0, 10, 20, 30))  # [5, 30) holds chunks 1, 2


def test_selection_restores_subtrees_and_implies_parent_directories() -> None:
    planner = Planner((b"a/b", b"z"), may_create_devices=False)
    entries = [
        Entry(path=b"a", type=EntryType.DIR),
        Entry(path=b"a/a", type=EntryType.DIR),
        Entry(path=b"a/b", type=EntryType.DIR),
        Entry(path=b"a/b/c", type=EntryType.SYMLINK, link_target=b"x"),
        Entry(path=b"a/bb", type=EntryType.DIR),
        Entry(path=b"b", type=EntryType.FIFO),
    ]
    steps = [planner.plan(e) for e in entries]
    shown = [(s.entry.path, s.step, s.implicit) for s in steps if s is not None]
    assert shown == [
        (b"a", Step.DIR, True),
        (b"a/b", Step.DIR, False),
        (b"a/b/c", Step.SYMLINK, False),
    ]
    report = planner.finish()
    assert [(w.path, w.message) for w in report.warnings] == [(b"z", "not in the recovery point")]


def test_a_selected_later_link_carries_the_data_of_an_unselected_first() -> None:
    planner = Planner((b"sub",), may_create_devices=False)
    first = _file(b"a", (5, 6), hardlink_group=7)
    assert planner.plan(first) is None
    carrier = planner.plan(Entry(path=b"sub", type=EntryType.DIR))
    assert carrier is not None
    one = planner.plan(Entry(path=b"sub/x", type=EntryType.FILE, size=11, hardlink_group=7))
    two = planner.plan(Entry(path=b"sub/y", type=EntryType.FILE, size=11, hardlink_group=7))
    assert one is not None and two is not None
    assert (one.step, one.entry.chunk_ids, one.fetch) == (Step.FILE, first.chunk_ids, (0, 1))
    assert (two.step, two.group) == (Step.LINK, 7)


def test_devices_and_sockets_need_root_or_are_skipped() -> None:
    planner = Planner((), may_create_devices=False)
    assert planner.plan(Entry(path=b"null", type=EntryType.CHAR_DEVICE, rdev=259)) is None
    assert planner.plan(Entry(path=b"sock", type=EntryType.SOCKET)) is None
    report = planner.finish()
    assert report.skipped == 2 and report.failed == 0
    assert "needs root" in report.warnings[0].message
    root = Planner((), may_create_devices=True)
    step = root.plan(Entry(path=b"null", type=EntryType.CHAR_DEVICE, rdev=259))
    assert step is not None and step.step is Step.SPECIAL
