"""Deciding what each manifest entry becomes (pure, no I/O).

The planner sees every entry of the manifest in order, selected or not, and turns the
selected ones into `Planned` steps for the writer:

- it checks again what the manifest decoder checked (defense in depth): a safe relative
  path, manifest order (strictly increasing by path components, so no entry comes twice
  and no directory is re-entered after it was finished), chunk sizes that add up to the
  size (a file's chunks hold its holes as zeros), holes sorted and inside the file, a
  symlink target;
- it resolves hardlinks. A group's first entry in the manifest carries the chunks. When
  it is selected, later selected members link to it; when it is not (item-level
  restore), the first selected member becomes the carrier of its chunks. A member whose
  group's first entry was refused is refused too: a link only ever points at an earlier
  entry of this same restore;
- it marks which chunks to fetch: one lying wholly inside a recorded hole is zeros by
  definition and is not fetched (a sparse VM image costs no transfer for its holes).

Refusals and unsupported types go to the planner's own report; the writer keeps another,
so the event loop and the writer thread never share counters.
"""

from __future__ import annotations

import bisect
import enum
import itertools
from dataclasses import dataclass, replace
from typing import Literal

from agent.restore_types import RestoreReport
from storage_pool import Entry, EntryType
from storage_pool.manifest import check_path


class Step(enum.Enum):
    DIR = "dir"
    FILE = "file"  # a regular file with its data (hardlink carriers included)
    LINK = "link"  # a later member of a hardlink group
    SYMLINK = "symlink"
    SPECIAL = "special"  # fifo, character or block device


@dataclass(frozen=True, slots=True)
class Planned:
    """One step for the writer. `implicit`: a directory above a selected item, created
    (with its metadata) only when missing and otherwise left alone. `group`: FILE records
    itself as the group's link source, LINK links to it. `fetch`: indexes of the chunks
    to fetch, in order; `offsets`: the file offset of every chunk."""

    entry: Entry
    parts: tuple[bytes, ...]
    step: Step
    implicit: bool = False
    group: int | None = None
    fetch: tuple[int, ...] = ()
    offsets: tuple[int, ...] = ()


def split_path(path: bytes) -> tuple[bytes, ...]:
    """Components of a manifest path; ValueError unless it is safe to join to a root."""
    check_path(path)
    parts = tuple(path.split(b"/"))
    # check_path already refuses these; kept so a change there cannot open a hole here.
    for part in parts:
        if part in (b"", b".", b"..") or b"\0" in part:
            raise ValueError(f"path has an unsafe component {part!r}")
    return parts


def file_problem(entry: Entry) -> str | None:
    """Why a data-carrying file entry cannot be written as recorded, or None."""
    if len(entry.chunk_ids) != len(entry.chunk_sizes):
        return "its chunk ids and chunk sizes differ in number"
    if any(s <= 0 for s in entry.chunk_sizes):
        return "a chunk size is not positive"
    total = sum(entry.chunk_sizes)
    if total != entry.size:
        return f"its chunks add up to {total} bytes, the entry says {entry.size}"
    end = 0
    for off, length in entry.holes:
        if off < end or length <= 0 or off + length > entry.size:
            return "its holes overlap, are unsorted or lie outside the file"
        end = off + length
    return None


def chunks_to_fetch(entry: Entry) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(indexes of chunks not wholly inside one hole, offset of every chunk)."""
    offsets = tuple(itertools.accumulate(entry.chunk_sizes, initial=0))[:-1]
    starts = [off for off, _ in entry.holes]
    fetch: list[int] = []
    for i, (off, size) in enumerate(zip(offsets, entry.chunk_sizes, strict=True)):
        j = bisect.bisect_right(starts, off) - 1
        if j >= 0 and off + size <= entry.holes[j][0] + entry.holes[j][1]:
            continue
        fetch.append(i)
    return tuple(fetch), offsets


@dataclass(slots=True)
class _Group:
    first: Entry
    refused: bool
    carrier_planned: bool = False


Selection = Literal["selected", "implicit"] | None


class Planner:
    """Feed it every entry in manifest order; `finish()` at the end."""

    def __init__(self, items: tuple[bytes, ...], *, may_create_devices: bool) -> None:
        self.report = RestoreReport()
        self._items = set(items)
        self._ancestors = {
            b"/".join(parts[:i])
            for item in items
            for parts in [item.split(b"/")]
            for i in range(1, len(parts))
        }
        self._found: set[bytes] = set()
        self._devices = may_create_devices
        self._last: tuple[bytes, ...] | None = None
        self._groups: dict[int, _Group] = {}

    def _refuse(self, entry: Entry, message: str) -> None:
        self.report.warn(entry.path, message, refused=True, failed=True)

    def _selection(self, parts: tuple[bytes, ...]) -> Selection:
        if not self._items:
            return "selected"
        for i in range(1, len(parts) + 1):
            prefix = b"/".join(parts[:i])
            if prefix in self._items:
                if i == len(parts):
                    self._found.add(prefix)
                return "selected"
        return "implicit" if b"/".join(parts) in self._ancestors else None

    def plan(self, entry: Entry) -> Planned | None:
        try:
            parts = split_path(entry.path)
            if self._last is not None and parts <= self._last:
                raise ValueError(
                    f"out of manifest order (after {b'/'.join(self._last)!r}):"
                    " entries must come depth-first with names sorted bytewise"
                )
        except ValueError as err:
            self._refuse(entry, str(err))
            group = entry.hardlink_group
            if entry.type is EntryType.FILE and group is not None and group not in self._groups:
                self._groups[group] = _Group(entry, refused=True)
            return None
        self._last = parts
        sel = self._selection(parts)
        if entry.type is EntryType.FILE and entry.hardlink_group is not None:
            return self._hardlink(entry, parts, entry.hardlink_group, sel)
        if sel is None or (sel == "implicit" and entry.type is not EntryType.DIR):
            return None
        return self._by_type(entry, parts, implicit=sel == "implicit")

    def _by_type(self, entry: Entry, parts: tuple[bytes, ...], *, implicit: bool) -> Planned | None:
        etype = entry.type
        if etype is EntryType.DIR:
            return Planned(entry, parts, Step.DIR, implicit=implicit)
        if etype is EntryType.FILE:
            return self._file(entry, parts, None)
        if etype is EntryType.SYMLINK:
            target = entry.link_target
            if not target or b"\0" in target:
                self._refuse(entry, "symlink without a target, or its target contains NUL")
                return None
            return Planned(entry, parts, Step.SYMLINK)
        if etype is EntryType.FIFO:
            return Planned(entry, parts, Step.SPECIAL)
        if etype in (EntryType.CHAR_DEVICE, EntryType.BLOCK_DEVICE):
            if self._devices:
                return Planned(entry, parts, Step.SPECIAL)
            self.report.skipped += 1
            self.report.warn(
                entry.path, "device not restored: creating one needs root", failed=False
            )
            return None
        self.report.skipped += 1
        self.report.warn(
            entry.path,
            "socket not restored: the program listening on it recreates it",
            failed=False,
        )
        return None

    def _file(self, entry: Entry, parts: tuple[bytes, ...], group: int | None) -> Planned | None:
        problem = file_problem(entry)
        if problem is not None:
            self._refuse(entry, problem)
            return None
        fetch, offsets = chunks_to_fetch(entry)
        return Planned(entry, parts, Step.FILE, group=group, fetch=fetch, offsets=offsets)

    def _hardlink(
        self, entry: Entry, parts: tuple[bytes, ...], group: int, sel: Selection
    ) -> Planned | None:
        state = self._groups.get(group)
        if state is None:  # the group's first entry: it carries the chunks
            state = self._groups[group] = _Group(entry, refused=file_problem(entry) is not None)
            if sel != "selected":
                return None
            state.carrier_planned = True
            return self._file(entry, parts, group)
        if sel != "selected":
            return None
        if state.refused:
            self._refuse(
                entry,
                f"hardlink to {state.first.path!r}, an entry that was refused: links only ever"
                " point at an earlier entry of the same restore",
            )
            return None
        if not state.carrier_planned:
            # The first entry is outside the selection: this member carries the data.
            state.carrier_planned = True
            first = state.first
            carrier = replace(
                entry,
                size=first.size,
                chunk_ids=first.chunk_ids,
                chunk_sizes=first.chunk_sizes,
                holes=first.holes,
            )
            return self._file(carrier, parts, group)
        return Planned(entry, parts, Step.LINK, group=group)

    def finish(self) -> RestoreReport:
        for item in sorted(self._items - self._found):
            self.report.warn(item, "not in the recovery point", failed=True)
        return self.report


def data_ranges(
    offset: int, length: int, holes: tuple[tuple[int, int], ...]
) -> list[tuple[int, int]]:
    """The [start, end) file ranges of the chunk at `offset` that lie outside every hole."""
    end = offset + length
    ranges: list[tuple[int, int]] = []
    pos = offset
    j = max(bisect.bisect_right(holes, (offset, 2**63)) - 1, 0)
    for hole_off, hole_len in holes[j:]:
        if hole_off >= end:
            break
        hole_end = hole_off + hole_len
        if hole_end <= pos:
            continue
        if hole_off > pos:
            ranges.append((pos, hole_off))
        pos = max(pos, hole_end)
        if pos >= end:
            break
    if pos < end:
        ranges.append((pos, end))
    return ranges
