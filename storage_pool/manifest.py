"""Recovery-point manifests: what a backup saw, entry by entry (pure, no I/O).

A manifest is a stream of msgpack objects: a header map, then one map per entry in path
order, then a trailer map with the entry count. The stream is cut into content-defined
chunks and stored like file data, so an unchanged tree yields mostly the same manifest
chunks as the previous backup. Decoding trusts nothing: every field is type-checked and
a path must be relative, normalised and free of NUL and `..`, so a hostile manifest is
refused with the entry it broke on rather than reaching a restore.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from storage_pool.chunker import Chunker
from storage_pool.errors import ManifestError
from storage_pool.ids import CHUNK_ID_LEN, ChunkId

MANIFEST_VERSION = 1
MAX_PATH = 64 * 1024
MAX_XATTRS_BYTES = 1024 * 1024
_MAX_BUFFER = 256 * 1024 * 1024  # one entry of a hostile stream cannot ask for more


class EntryType(enum.StrEnum):
    FILE = "f"
    DIR = "d"
    SYMLINK = "l"
    CHAR_DEVICE = "c"
    BLOCK_DEVICE = "b"
    FIFO = "p"
    SOCKET = "s"


@dataclass(slots=True)
class Entry:
    """One filesystem object. `path` is relative to the data source root, '/'-separated.

    A regular file's content is the concatenation of its chunks (holes included, as
    zeros); `holes` lists (offset, length) ranges that were holes, so a restore can
    recreate sparseness. Entries sharing a `hardlink_group` are one inode: the first one
    in the manifest carries the chunks, the others link to it.
    """

    path: bytes
    type: EntryType
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    atime_ns: int = 0
    size: int = 0
    chunk_ids: tuple[ChunkId, ...] = ()
    chunk_sizes: tuple[int, ...] = ()
    link_target: bytes | None = None
    hardlink_group: int | None = None
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    holes: tuple[tuple[int, int], ...] = ()
    rdev: int = 0
    inode: int = 0

    def to_wire(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "p": self.path,
            "t": self.type.value,
            "m": self.mode,
            "u": self.uid,
            "g": self.gid,
            "mt": self.mtime_ns,
            "ct": self.ctime_ns,
            "at": self.atime_ns,
            "s": self.size,
        }
        if self.chunk_ids:
            doc["c"] = b"".join(self.chunk_ids)
            doc["cs"] = list(self.chunk_sizes)
        if self.link_target is not None:
            doc["l"] = self.link_target
        if self.hardlink_group is not None:
            doc["h"] = self.hardlink_group
        if self.xattrs:
            doc["x"] = [list(kv) for kv in self.xattrs]
        if self.holes:
            doc["o"] = [list(h) for h in self.holes]
        if self.rdev:
            doc["r"] = self.rdev
        if self.inode:
            doc["i"] = self.inode
        return doc


def check_path(path: bytes) -> None:
    """Raise ValueError unless `path` is a safe relative manifest path."""
    if not path or len(path) > MAX_PATH:
        raise ValueError("path is empty or too long")
    if b"\0" in path:
        raise ValueError("path contains NUL")
    if path.startswith(b"/"):
        raise ValueError("path is absolute")
    for part in path.split(b"/"):
        if part in (b"", b".", b".."):
            raise ValueError(f"path has a {part.decode() or 'empty'!r} component")


def _int(doc: dict[str, Any], key: str, default: int | None = None, lo: int = 0) -> int:
    value = doc.get(key, default)
    if type(value) is not int or value < lo:  # bool is not an int here
        raise ValueError(f"field {key!r} must be an integer >= {lo}, got {value!r:.60}")
    return value


def _bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError(f"{what} must be bytes")
    return value


def _chunks_from_wire(doc: dict[str, Any]) -> tuple[tuple[ChunkId, ...], tuple[int, ...]]:
    raw_ids = _bytes(doc.get("c", b""), "chunk ids")
    sizes = doc.get("cs", [])
    if len(raw_ids) % CHUNK_ID_LEN or not isinstance(sizes, list):
        raise ValueError("chunk list is malformed")
    ids = tuple(
        ChunkId(raw_ids[i : i + CHUNK_ID_LEN]) for i in range(0, len(raw_ids), CHUNK_ID_LEN)
    )
    if len(sizes) != len(ids) or any(type(s) is not int or s <= 0 for s in sizes):
        raise ValueError("chunk sizes do not match the chunk ids")
    return ids, tuple(sizes)


def _link_from_wire(doc: dict[str, Any], etype: EntryType) -> bytes | None:
    link = doc.get("l")
    if link is not None:
        link = _bytes(link, "link target")
        if not link or b"\0" in link or len(link) > MAX_PATH:
            raise ValueError("link target is empty, too long or contains NUL")
    if (etype is EntryType.SYMLINK) != (link is not None):
        raise ValueError("only symlinks carry a link target, and every symlink does")
    return link


def _xattrs_from_wire(doc: dict[str, Any]) -> tuple[tuple[bytes, bytes], ...]:
    xattrs: list[tuple[bytes, bytes]] = []
    total = 0
    for kv in doc.get("x", []):
        if not isinstance(kv, list) or len(kv) != 2:
            raise ValueError("xattr is not a (name, value) pair")
        name, value = _bytes(kv[0], "xattr name"), _bytes(kv[1], "xattr value")
        total += len(name) + len(value)
        if not name or b"\0" in name or total > MAX_XATTRS_BYTES:
            raise ValueError("xattr name is empty, contains NUL, or xattrs are too large")
        xattrs.append((name, value))
    return tuple(xattrs)


def _holes_from_wire(doc: dict[str, Any], size: int) -> tuple[tuple[int, int], ...]:
    holes: list[tuple[int, int]] = []
    end = 0
    for h in doc.get("o", []):
        if not isinstance(h, list) or len(h) != 2 or any(type(v) is not int for v in h):
            raise ValueError("hole is not an (offset, length) pair")
        off, length = h
        if off < end or length <= 0 or off + length > size:
            raise ValueError("holes overlap, are unsorted or lie outside the file")
        end = off + length
        holes.append((off, length))
    return tuple(holes)


def entry_from_wire(doc: Any) -> Entry:
    if not isinstance(doc, dict):
        raise ValueError("entry is not a map")
    path = _bytes(doc.get("p"), "path")
    check_path(path)
    kind = doc.get("t")
    if not isinstance(kind, str) or kind not in EntryType._value2member_map_:
        raise ValueError(f"unknown entry type {kind!r:.20}")
    etype = EntryType(kind)
    size = _int(doc, "s", 0)
    ids, sizes = _chunks_from_wire(doc)
    if etype is not EntryType.FILE and ids:
        raise ValueError(f"a {etype.name.lower()} entry cannot carry chunks")
    group = doc.get("h")
    # Only a hardlink that is not its group's first entry carries a size without chunks.
    if etype is EntryType.FILE and (ids or group is None) and sum(sizes) != size:
        raise ValueError(f"chunks add up to {sum(sizes)} bytes, the entry says {size}")
    if group is not None and (type(group) is not int or group < 0):
        raise ValueError("hardlink group must be a non-negative integer")
    return Entry(
        path=path,
        type=etype,
        mode=_int(doc, "m", 0),
        uid=_int(doc, "u", 0),
        gid=_int(doc, "g", 0),
        mtime_ns=_int(doc, "mt", 0, lo=-(2**63)),
        ctime_ns=_int(doc, "ct", 0, lo=-(2**63)),
        atime_ns=_int(doc, "at", 0, lo=-(2**63)),
        size=size,
        chunk_ids=ids,
        chunk_sizes=sizes,
        link_target=_link_from_wire(doc, etype),
        hardlink_group=group,
        xattrs=_xattrs_from_wire(doc),
        holes=_holes_from_wire(doc, size),
        rdev=_int(doc, "r", 0),
        inode=_int(doc, "i", 0),
    )


class ManifestWriter:
    """Encodes entries and hands back manifest chunks as they become final."""

    def __init__(self, chunker: Chunker, data_source: str) -> None:
        self._chunker = chunker
        self._packer = msgpack.Packer(use_bin_type=True)
        self._buf = bytearray(
            self._packer.pack({"stockade_manifest": MANIFEST_VERSION, "data_source": data_source})
        )
        self._count = 0
        self._last_key: list[bytes] | None = None
        self.size = 0

    @property
    def count(self) -> int:
        return self._count

    def add(self, entry: Entry) -> list[bytes]:
        # Depth-first order with names sorted bytewise, i.e. by path components: b"a/x"
        # comes before b"a-b" although the raw bytes sort the other way.
        key = entry.path.split(b"/")
        if self._last_key is not None and key <= self._last_key:
            raise ValueError(
                f"entries must come depth-first with names sorted bytewise: {entry.path!r}"
                f" after {b'/'.join(self._last_key)!r}"
            )
        check_path(entry.path)
        self._last_key = key
        self._buf += self._packer.pack(entry.to_wire())
        self._count += 1
        if len(self._buf) >= 4 * self._chunker.params.max_size:
            return self._cut(final=False)
        return []

    def finish(self) -> list[bytes]:
        self._buf += self._packer.pack({"end": self._count})
        return self._cut(final=True)

    def _cut(self, *, final: bool) -> list[bytes]:
        pieces = [bytes(v) for v in self._chunker.cut(self._buf)]
        if not final and pieces:
            tail = pieces.pop()  # may end only because the buffer did
            self._buf = bytearray(tail)
        else:
            self._buf = bytearray()
        self.size += sum(len(p) for p in pieces)
        return pieces


def iter_entries(pieces: Iterable[bytes], what: str) -> Iterator[Entry]:
    """Decode a manifest stream given as consecutive pieces; ManifestError names `what`."""
    unpacker = msgpack.Unpacker(
        raw=False,
        use_list=True,
        strict_map_key=True,
        max_buffer_size=_MAX_BUFFER,
    )
    state = "header"
    index = 0
    try:
        for piece in pieces:
            unpacker.feed(piece)
            for obj in unpacker:
                if state == "header":
                    if (
                        not isinstance(obj, dict)
                        or obj.get("stockade_manifest") != MANIFEST_VERSION
                    ):
                        raise ValueError("missing or unknown manifest header")
                    state = "entries"
                elif state == "entries":
                    if isinstance(obj, dict) and "end" in obj and "p" not in obj:
                        if obj["end"] != index:
                            raise ValueError(f"trailer counts {obj['end']} entries, found {index}")
                        state = "done"
                        continue
                    entry = entry_from_wire(obj)
                    index += 1
                    yield entry
                else:
                    raise ValueError("data after the manifest trailer")
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        raise ManifestError(f"manifest of {what}", f"entry {index}: {err}") from err
    if state != "done":
        raise ManifestError(f"manifest of {what}", f"truncated after {index} entries")
