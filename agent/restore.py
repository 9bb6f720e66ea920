"""The restore engine: writes a recovery point's entries into a target folder.

    report = await restore(entries, fetcher, RestoreOptions(target=b"/srv/restore"))

Three parts run together:
- the planner task reads `entries` (manifest order), checks and selects them
  (restore_plan.py) and queues the steps for the writer and the chunk ids for the
  fetcher, in the same order;
- the fetch task (restore_fetch.py) fetches chunk batches ahead of the writer, within a
  read-ahead budget, so the network and the disk overlap;
- the writer (this coroutine) performs the steps on one dedicated thread
  (restore_walk.py walks the target by directory descriptors, restore_tree.py writes the
  objects, restore_meta.py applies metadata): every filesystem call of a restore happens
  there, in order, so a cancellation can clean up after the call in flight, on the same
  thread.

Safety (a hostile or corrupt manifest never writes outside the target) is enforced twice:
the planner refuses unsafe paths, bad order, inconsistent sizes and dangling hardlinks;
the tree walks only by directory descriptors with O_NOFOLLOW. Refusals fail the entry and
are reported (`RestoreWarning.refused`) and logged.

Per-entry problems are counted warnings; `RestoreError` (with the partial report) only
when the restore as a whole cannot go on: the target cannot be opened, the entry stream
fails, or the chunk source fails other than with `ChunkUnavailableError`. Cancellation
stops after the filesystem call in flight and removes the temp file of the file being
written; files already renamed into place stay.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

import structlog

from agent.restore_fetch import ChunkPipeline
from agent.restore_meta import restored_name
from agent.restore_plan import Planned, Planner, Step
from agent.restore_tree import TMP_PREFIX, TargetTree
from agent.restore_types import (
    ChunkFetcher,
    ChunkUnavailableError,
    ConflictMode,
    RestoreError,
    RestoreOptions,
    RestoreReport,
    RestoreWarning,
)
from storage_pool import Entry

__all__ = [
    "TMP_PREFIX",
    "ChunkFetcher",
    "ChunkUnavailableError",
    "ConflictMode",
    "ProgressCallback",
    "RestoreError",
    "RestoreOptions",
    "RestoreReport",
    "RestoreWarning",
    "restore",
    "restored_name",
]

log = structlog.get_logger()

ProgressCallback = Callable[[int, int, bytes], None]
PROGRESS_INTERVAL = 0.25  # seconds: "a few times per second"
STEP_QUEUE = 1024  # steps planned ahead of the writer

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _End:
    error: BaseException | None = None


class _Progress:
    def __init__(self, callback: ProgressCallback | None, tree: TargetTree) -> None:
        self._callback = callback
        self._tree = tree
        self._last = -PROGRESS_INTERVAL

    def tick(self, path: bytes, *, force: bool = False) -> None:
        if self._callback is None:
            return
        now = time.monotonic()
        if force or now - self._last >= PROGRESS_INTERVAL:
            self._last = now
            report, current = self._tree.report, self._tree.current
            partial = current.written if current is not None else 0
            self._callback(report.files, report.bytes + partial, path)


class _Writer:
    """Runs the tree's methods, in order, on its one thread."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="restore-write")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False)  # idle: the last call was awaited


async def _plan(
    entries: AsyncIterator[Entry],
    planner: Planner,
    pipeline: ChunkPipeline,
    steps: asyncio.Queue[Planned | _End],
) -> None:
    """The planner task: entries in, steps and wanted chunk ids out, same order."""
    error: BaseException | None = None
    try:
        if hasattr(entries, "aclose"):
            async with aclosing(cast(Any, entries)) as closing:
                await _plan_all(closing, planner, pipeline, steps)
        else:
            await _plan_all(entries, planner, pipeline, steps)
    except asyncio.CancelledError:
        raise
    except Exception as err:  # task boundary: the writer raises it as RestoreError
        error = err
    await pipeline.no_more()
    await steps.put(_End(error))


async def _plan_all(
    entries: AsyncIterator[Entry],
    planner: Planner,
    pipeline: ChunkPipeline,
    steps: asyncio.Queue[Planned | _End],
) -> None:
    async for entry in entries:
        step = planner.plan(entry)
        if step is None:
            continue
        if step.fetch:
            e = step.entry
            await pipeline.want([(e.chunk_ids[i], e.chunk_sizes[i]) for i in step.fetch])
        await steps.put(step)


async def _write_file(
    step: Planned, pipeline: ChunkPipeline, tree: TargetTree, writer: _Writer, progress: _Progress
) -> None:
    fw = await writer.run(tree.begin_file, step)
    ids = step.entry.chunk_ids
    # Every fetched chunk of the file is taken, written or not, to stay in step.
    for i in step.fetch:
        cid, data, charge = await pipeline.next()
        try:
            if cid != ids[i]:
                raise RestoreError(f"internal: chunk stream out of step at {step.entry.path!r}")
            if fw is not None:
                if isinstance(data, str):
                    await writer.run(tree.fail_file, fw, f"cannot fetch its data: {data}")
                    fw = None
                elif not await writer.run(tree.write, fw, step.offsets[i], data):
                    fw = None
        finally:
            await pipeline.release(charge)
        progress.tick(step.entry.path)
    if fw is not None:
        await writer.run(tree.finish_file, fw)


async def _write_all(
    steps: asyncio.Queue[Planned | _End],
    pipeline: ChunkPipeline,
    tree: TargetTree,
    writer: _Writer,
    progress: _Progress,
) -> None:
    while True:
        step = await steps.get()
        if isinstance(step, _End):
            if step.error is not None:
                raise RestoreError(
                    f"reading the entries to restore failed: {step.error}"
                ) from step.error
            return
        if step.step is Step.FILE:
            await _write_file(step, pipeline, tree, writer, progress)
        else:
            await writer.run(tree.put, step)
        progress.tick(step.entry.path)


async def _stop(*tasks: asyncio.Task[None]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():  # we were cancelled, not (only) the task
                raise


def _log_outcome(report: RestoreReport, target: bytes, seconds: float) -> None:
    for warning in report.warnings:
        if warning.refused:
            log.warning(
                "restore_entry_refused", path=os.fsdecode(warning.path), reason=warning.message
            )
    log.info(
        "restore_finished",
        target=os.fsdecode(target),
        files=report.files,
        dirs=report.dirs,
        symlinks=report.symlinks,
        hardlinks=report.hardlinks,
        specials=report.specials,
        bytes=report.bytes,
        skipped=report.skipped,
        renamed=report.renamed,
        failed=report.failed,
        refused=report.refused,
        warnings=report.warnings_total,
        seconds=round(seconds, 3),
    )


async def restore(
    entries: AsyncIterator[Entry],
    fetcher: ChunkFetcher,
    options: RestoreOptions,
    *,
    on_progress: ProgressCallback | None = None,
) -> RestoreReport:
    """Restore `entries` (manifest order) below `options.target`; chunk data from
    `fetcher`. `on_progress(files, bytes, current_path)` is called at most every
    PROGRESS_INTERVAL seconds, and once at the end."""
    options.validate()
    started = time.monotonic()
    target = options.target_bytes()
    planner = Planner(options.normalised_items(), may_create_devices=os.geteuid() == 0)
    writer = _Writer()
    try:
        try:
            tree = await writer.run(TargetTree.open, options)
        except OSError as err:
            raise RestoreError(
                f"cannot open restore target {os.fsdecode(target)!r}: {err.strerror or err}"
            ) from err
        pipeline = ChunkPipeline(fetcher)
        steps: asyncio.Queue[Planned | _End] = asyncio.Queue(STEP_QUEUE)
        progress = _Progress(on_progress, tree)
        plan_task = asyncio.create_task(
            _plan(entries, planner, pipeline, steps), name="restore-plan"
        )
        fetch_task = asyncio.create_task(pipeline.run(), name="restore-fetch")
        try:
            await _write_all(steps, pipeline, tree, writer, progress)
            await writer.run(tree.close)
        except BaseException as err:
            await _stop(plan_task, fetch_task)
            await writer.run(tree.abort)  # after the call in flight: same thread
            if isinstance(err, RestoreError):
                err.report = tree.report
                err.report.merge(planner.report)
            raise
        await asyncio.gather(plan_task, fetch_task)
    finally:
        writer.shutdown()
    report = tree.report
    report.merge(planner.finish())
    progress.tick(b"", force=True)
    _log_outcome(report, target, time.monotonic() - started)
    return report
