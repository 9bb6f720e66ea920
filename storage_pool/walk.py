"""Walking local trees into a backup target, in manifest order.

`walk_tree` visits the roots planned by walk_roots.py depth-first with names sorted
bytewise (the manifest order), skipping what the excludes (excludes.py) match. It reads
only files that changed since the previous backup: a file whose size, mtime, ctime and
inode equal those of its entry in `parent_files` is reused without reading, once the
target confirms it still holds every chunk of it (a missing one means the file is read
again). Reading, chunking, hashing, compressing and storing run on `workers` threads
(file_reader.py); small files go in groups, so one `missing_sync` and one `put_sync`
serve many of them.

Order of calls on the target: a group's chunks are put (or confirmed present) before
the walker adds the entries that reference them; entries are added from the walker's
thread in manifest order, in batches of up to 1000. The walker never commits: it
returns its stats and the caller commits (or abandons the session on an exception).

Per-object problems (vanished, unreadable, changed while read, a root that does not
exist) are counted warnings: the entry is left out, or holds what was read. Setting the
cancel event makes the walk raise `WalkCancelled` soon after (checked between objects
and between chunks); nothing should then be committed. `on_progress` is called from the
walker's thread at most every `progress_interval` seconds, and once at the end.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import NamedTuple

from storage_pool.excludes import Excludes
from storage_pool.file_reader import FileReader, Item, Result, WalkCancelled
from storage_pool.manifest import Entry, EntryType
from storage_pool.metadata import entry_from_stat, entry_type
from storage_pool.target import BackupTarget
from storage_pool.walk_options import IngestStats, WalkOptions, WalkParams, WalkProgress
from storage_pool.walk_roots import RootNode, plan_roots

__all__ = [
    "IngestStats",
    "WalkCancelled",
    "WalkOptions",
    "WalkParams",
    "WalkProgress",
    "walk_tree",
]

GROUP_BYTES = 8 * 1024 * 1024
ENTRY_BATCH = 1000


class _Node(NamedTuple):
    rel: bytes
    full: bytes
    st: os.stat_result
    plan: RootNode | None  # None below a root: an ordinary object
    dev: int  # device of the root it is below (one_file_system)


_Slot = tuple[Entry, "Future[list[Result | str]] | None", int]


def walk_tree(
    target: BackupTarget,
    base: bytes,
    roots: Sequence[bytes],
    parent_files: Mapping[bytes, Entry],
    *,
    params: WalkParams,
    options: WalkOptions | None = None,
) -> IngestStats:
    """Walk `roots` (normalised absolute paths at or below the absolute `base`) into
    `target`, with manifest paths relative to `base`. Blocking: run it in a thread."""
    started = time.perf_counter()
    walker = _Walker(target, parent_files, params, options or WalkOptions())
    walker.run(plan_roots(base, roots))
    walker.stats.seconds = time.perf_counter() - started
    return walker.stats


class _Walker:
    """Walks in manifest order, feeds file groups to the workers, and adds entries to
    the target in order as their groups complete."""

    def __init__(
        self,
        target: BackupTarget,
        parent_files: Mapping[bytes, Entry],
        params: WalkParams,
        options: WalkOptions,
    ) -> None:
        self.target = target
        self.parent_files = parent_files
        self.params = params
        self.options = options
        self.excludes = Excludes(options.excludes)
        self.cancel = options.cancel
        self.stats = IngestStats()
        self.window: collections.deque[_Slot] = collections.deque()
        self.outstanding: collections.deque[Future[list[Result | str]]] = collections.deque()
        self.ready: list[Entry] = []
        self.group: list[Item] = []
        self.group_bytes = 0
        self.hardlinks: dict[tuple[int, int], int] = {}
        self.files_seen = 0
        self.bytes_seen = 0
        self.path = b""
        self.next_progress = 0.0
        self.wake_interval = max(options.progress_interval, 0.02)  # never a busy wait

    def warn(self, msg: str) -> None:
        self.stats.warnings.append(msg)

    def run(self, top: RootNode) -> None:
        workers = self.params.workers
        compress = ThreadPoolExecutor(workers, thread_name_prefix="walk-store")
        ex = ThreadPoolExecutor(workers, thread_name_prefix="walk")
        self.ex = ex
        self.reader = FileReader(
            self.target, self.params.chunker, self.params.compression_level, compress, self.cancel
        )
        try:
            self._walk(top)
            self.submit_group()
            while self.window or self.outstanding:
                self.drain(block=True)
        except Exception as err:
            # Queued groups are dropped and running ones stop at their next check.
            self.reader.stop.set()
            if self.cancel.is_set() and not isinstance(err, WalkCancelled):
                # A target may fail its calls once cancelled (requests aborted).
                raise WalkCancelled(f"the walk was cancelled ({err!r})") from err
            raise
        except BaseException:
            self.reader.stop.set()
            raise
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
            compress.shutdown(wait=True, cancel_futures=True)
        if self.ready:
            self.target.add_entries_sync(self.ready)
            self.ready = []
        c = self.reader.counters
        self.stats.chunks = c.chunks
        self.stats.new_chunks = c.put_chunks
        self.stats.new_stored_bytes = c.put_bytes
        self.progress(force=True)
        if self.cancel.is_set():  # however late: the caller must not commit
            raise WalkCancelled("the walk was cancelled at its end")

    def _walk(self, top: RootNode) -> None:
        stack: list[collections.deque[_Node]] = []
        if top.is_root:
            try:
                dev = os.stat(top.full).st_dev
            except OSError as err:
                self.warn(f"{os.fsdecode(top.full)}: {err.strerror or err}")
                return
            stack.append(self.list_dir(top.full, top.rel, dev))
        else:
            stack.append(self.plan_nodes(top))
        while stack:
            if not stack[-1]:
                stack.pop()
                continue
            node = stack[-1].popleft()
            if self.cancel.is_set():
                raise WalkCancelled(f"the walk was cancelled at {os.fsdecode(node.full)}")
            self.path = node.full
            if node.plan is not None and not node.plan.is_root:
                if self.visit(node) is not None:  # an ancestor directory of roots
                    stack.append(self.plan_nodes(node.plan))
            else:
                descend = self.visit(node)
                if descend is not None:
                    stack.append(self.list_dir(node.full, node.rel, descend))
            self.drain(block=len(self.outstanding) >= self.params.workers * 4)
            self.progress()

    def plan_nodes(self, plan: RootNode) -> collections.deque[_Node]:
        """The planned children of an ancestor: roots and ancestors of roots."""
        out: collections.deque[_Node] = collections.deque()
        for child in plan.sorted_children():
            if child.is_root and self.excludes.match(child.full):
                continue
            try:
                st = os.lstat(child.full)
            except FileNotFoundError:
                what = "backup root" if child.is_root else "directory above backup roots"
                self.warn(f"{os.fsdecode(child.full)}: {what} does not exist, skipped")
                continue
            except OSError as err:
                self.warn(f"{os.fsdecode(child.full)}: {err.strerror or err}")
                continue
            out.append(_Node(child.rel, child.full, st, child, st.st_dev))
        return out

    def list_dir(self, full_dir: bytes, rel: bytes, dev: int) -> collections.deque[_Node]:
        """One directory level, names sorted bytewise, excluded names left out."""
        out: collections.deque[_Node] = collections.deque()
        try:
            with os.scandir(full_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            self.warn(f"{os.fsdecode(full_dir)}: cannot list directory: {err.strerror or err}")
            return out
        excludes = self.excludes
        for e in entries:
            if excludes and excludes.match(e.path):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError as err:
                self.warn(f"{os.fsdecode(e.path)}: {err.strerror or err}")
                continue
            out.append(_Node(rel + b"/" + e.name if rel else e.name, e.path, st, None, dev))
        return out

    def visit(self, node: _Node) -> int | None:
        """Record one object; for a directory to descend into, the device of its root."""
        rel, full, st = node.rel, node.full, node.st
        etype = entry_type(st)
        if etype is None:
            self.warn(f"{os.fsdecode(full)}: unsupported file type, skipped")
            return None
        if node.plan is not None and not node.plan.is_root and etype is not EntryType.DIR:
            self.warn(f"{os.fsdecode(full)}: not a directory, the backup roots below skipped")
            return None
        try:
            entry = entry_from_stat(rel, full, st, etype)
        except OSError as err:
            self.warn(f"{os.fsdecode(full)}: {err.strerror or err}")
            return None
        if etype is not EntryType.FILE:
            if etype is EntryType.DIR:
                self.stats.dirs += 1
            else:
                self.stats.other += 1
            self.add_now(entry)
            if etype is not EntryType.DIR:
                return None
            if self.options.one_file_system and node.plan is None and st.st_dev != node.dev:
                return None  # a mount point: recorded, not descended
            return node.dev
        self.visit_file(rel, full, st, entry)
        return None

    def visit_file(self, rel: bytes, full: bytes, st: os.stat_result, entry: Entry) -> None:
        """Queue a regular file: reused from its parent entry or read by a worker."""
        self.files_seen += 1
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in self.hardlinks:
                self.stats.files += 1
                self.add_now(replace(entry, hardlink_group=self.hardlinks[key]))
                return
            entry.hardlink_group = self.hardlinks[key] = len(self.hardlinks)
        self.bytes_seen += st.st_size
        if st.st_size == 0:
            self.stats.files += 1
            self.add_now(entry)
            return
        p = self.parent_files.get(rel)
        if p is not None and (p.size, p.mtime_ns, p.ctime_ns, p.inode) != (
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
        ):
            p = None
        if p is not None and not p.chunk_ids:
            p = None  # a cache row without chunks cannot stand for a non-empty file
        if st.st_size > GROUP_BYTES:
            self.submit_group()
        self.group.append(Item(entry, full, p))
        self.group_bytes += 0 if p is not None else st.st_size
        if len(self.group) >= self.params.group_files or self.group_bytes >= GROUP_BYTES:
            self.submit_group()

    def add_now(self, entry: Entry) -> None:
        """An entry that needs no reading still waits for the files before it."""
        self.submit_group()
        self.window.append((entry, None, 0))

    def submit_group(self) -> None:
        if not self.group:
            return
        fut = self.ex.submit(self.reader.process, self.group)
        for idx, item in enumerate(self.group):
            self.window.append((item.entry, fut, idx))
        self.outstanding.append(fut)
        self.group, self.group_bytes = [], 0

    def drain(self, *, block: bool) -> None:
        limit = self.params.workers * 4
        while self.outstanding and (block or self.outstanding[0].done()):
            head = self.outstanding[0]
            if not head.done():
                # Wake up for progress and cancellation while a large file is read.
                wait([head], timeout=self.wake_interval, return_when=FIRST_COMPLETED)
                self.progress()
                if self.cancel.is_set():
                    raise WalkCancelled("the walk was cancelled while reading files")
                continue
            self.outstanding.popleft().result()  # surfaces worker errors at once
            block = block and len(self.outstanding) >= limit
        while self.window:
            entry, fut, idx = self.window[0]
            if fut is not None and not fut.done():
                break
            self.window.popleft()
            if fut is None:
                self.ready.append(entry)
                continue
            res = fut.result()[idx]
            if isinstance(res, str):
                self.warn(res)
                continue
            self.ready.append(self.complete(entry, res))
        if len(self.ready) >= ENTRY_BATCH:
            self.target.add_entries_sync(self.ready)
            self.ready = []

    def complete(self, entry: Entry, res: Result) -> Entry:
        stats = self.stats
        stats.files += 1
        stats.logical_bytes += sum(res.sizes)
        if res.st is None:
            stats.unchanged_files += 1
            done = replace(entry, chunk_ids=res.ids, chunk_sizes=res.sizes, holes=res.holes)
            if self.options.on_file is not None:
                self.options.on_file(done)
            return done
        stats.bytes_read += res.read
        st = res.st
        changed = (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns)
        if changed or res.read != st.st_size:
            stats.warnings.append(
                f"{entry.path.decode(errors='replace')}: changed while being read"
            )
        done = replace(
            entry,
            size=res.read,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            chunk_ids=res.ids,
            chunk_sizes=res.sizes,
            holes=res.holes,
        )
        if self.options.on_file is not None and not changed and res.read == st.st_size:
            self.options.on_file(done)
        return done

    def progress(self, *, force: bool = False) -> None:
        if self.options.on_progress is None:
            return
        now = time.monotonic()
        if not force and now < self.next_progress:
            return
        self.next_progress = now + self.options.progress_interval
        with self.reader.counters.lock:
            read = self.reader.counters.bytes_read
        self.options.on_progress(
            WalkProgress(
                files=self.files_seen,
                dirs=self.stats.dirs,
                bytes_read=read,
                bytes_seen=self.bytes_seen,
                path=self.path,
                warnings=len(self.stats.warnings),
            )
        )
