"""What a backup and a restore job do on the agent, over the HTTP data plane.

Backup (``cmd.backup``), in this order:

1. ``POST /sessions`` opens a server session for the job (chunker parameters and
   compression level come back with it: both sides chunk alike).
2. The files cache of the data source is loaded (a worker thread: sqlite3).
3. ``agent.backup_source.run_backup_walk`` runs in a worker thread with a
   :class:`~agent.remote_target.RemoteTarget`: chunks are asked about, uploaded, then the
   entries that reference them are sent, in manifest order. Paths are absolute roots
   below the base ``/``, so manifest paths are the absolute paths without the leading
   ``/``.
4. The entry tail is flushed and the session committed (``rp_id``).
5. Only then the files cache is replaced by the files read or reused in this backup.

Any failure aborts the session (``DELETE``, best effort) and reports ``failed`` with the
reason; the files cache is untouched. Cancel sets the walker's cancel flag and fails the
target's calls in flight; the session is aborted and the result is ``cancelled``.
Per-file problems are warnings: ``succeeded_with_warnings``.

Restore (``cmd.restore``): ``agent.restore.restore`` reads the entries the server streams
for the job and fetches chunks through :class:`~agent.http_fetcher.HttpChunkFetcher`.
``target_path`` ``""`` restores to the original location ``/``. Cancel cancels the
restore (it removes the file in flight) and reports ``cancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any, Final

import structlog

from agent.backup_source import WalkCancelled, WalkParams, WalkProgress, run_backup_walk
from agent.commands import BackupCommand, RestoreCommand
from agent.files_cache import FilesCache
from agent.http_client import DataPlaneClient, DataPlaneError, SessionInfo
from agent.http_fetcher import HttpChunkFetcher
from agent.jobs import JobContext, JobOutcome
from agent.remote_target import RemoteTarget, TargetCancelledError
from agent.restore import restore
from agent.restore_types import RestoreError, RestoreOptions, RestoreReport
from storage_pool.atomicfile import syncfs
from storage_pool.chunker import ChunkerParams
from storage_pool.manifest import Entry
from storage_pool.walk import IngestStats

__all__ = ["FILES_CACHE", "AgentJobRunner"]

log = structlog.get_logger()

FILES_CACHE: Final = "files_cache.sqlite"


class _Cancelled(Exception):
    pass


class AgentJobRunner:
    """Runs backup and restore jobs (``agent.jobs.JobRunner``)."""

    def __init__(self, client: DataPlaneClient, state_dir: Path, *, workers: int = 2) -> None:
        self._client = client
        self._cache_path = state_dir / FILES_CACHE
        self._workers = workers

    # ------------------------------------------------------------------ backup

    async def backup(self, cmd: BackupCommand, ctx: JobContext) -> JobOutcome:
        try:
            info = await self._client.open_session(ctx.job_id)
        except DataPlaneError as err:
            return JobOutcome(
                "failed", error=f"cannot open a backup session: {err}", retryable=err.transient
            )
        target = RemoteTarget(self._client, info.session_id, asyncio.get_running_loop())
        ctx.on_cancel(target.cancel)
        try:
            if ctx.cancel_flag.is_set():
                raise _Cancelled
            stats, rp_id, kept = await self._backup_session(cmd, ctx, info, target)
        except (_Cancelled, WalkCancelled, TargetCancelledError):
            await self._abort(info.session_id)
            return JobOutcome("cancelled", error="cancelled by the server")
        except asyncio.CancelledError:
            await asyncio.shield(self._abort(info.session_id))
            raise
        except Exception as err:
            await self._abort(info.session_id)
            if ctx.cancel_flag.is_set():  # a call failed because the cancel cut it short
                return JobOutcome("cancelled", error="cancelled by the server")
            log.warning("backup_failed", error=str(err), error_type=type(err).__name__)
            return JobOutcome(
                "failed",
                error=str(err) or type(err).__name__,
                retryable=isinstance(err, DataPlaneError) and err.transient,
            )
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._replace_cache, info.data_source_id, rp_id, kept)
        result = _backup_stats(stats, target)
        result["rp_id"] = rp_id
        return JobOutcome(
            "succeeded_with_warnings" if stats.warnings else "succeeded",
            warnings=stats.warnings,
            stats=result,
        )

    async def _backup_session(
        self, cmd: BackupCommand, ctx: JobContext, info: SessionInfo, target: RemoteTarget
    ) -> tuple[IngestStats, str, list[Entry]]:
        parent_files = await asyncio.to_thread(self._load_cache, info.data_source_id)
        params = WalkParams(
            chunker=ChunkerParams(
                min_size=info.chunker["min_size"],
                avg_size=info.chunker["avg_size"],
                max_size=info.chunker["max_size"],
            ),
            compression_level=info.compression_level,
            workers=self._workers,
            # Each group of unchanged files costs one missing round trip: bigger groups.
            group_files=256,
        )

        def on_progress(p: WalkProgress) -> None:
            ctx.progress.update(files=p.files, nbytes=p.bytes_read, current_path=p.path)

        walked = await asyncio.to_thread(
            lambda: run_backup_walk(
                target,
                cmd.paths,
                cmd.excludes,
                params,
                parent_files,
                on_progress=on_progress,
                cancel=ctx.cancel_flag,
            )
        )
        stats = walked.stats
        if ctx.cancel_flag.is_set():
            raise _Cancelled
        await target.flush()
        rp_id = await self._client.commit(
            info.session_id, len(stats.warnings), _backup_stats(stats, target)
        )
        log.info("backup_committed", rp_id=rp_id, data_source_id=info.data_source_id)
        return stats, rp_id, walked.entries_for_cache

    def _load_cache(self, data_source_id: str) -> dict[bytes, Entry]:
        with FilesCache.open(self._cache_path) as cache:
            _, files = cache.load(data_source_id)
        return files

    def _replace_cache(self, data_source_id: str, rp_id: str, kept: list[Entry]) -> None:
        try:
            with FilesCache.open(self._cache_path) as cache:
                cache.replace(data_source_id, rp_id, kept)
        except Exception as err:
            # The backup is committed; a stale cache only costs re-reading next time.
            log.warning("files_cache_not_updated", error=str(err))
            raise

    async def _abort(self, sid: str) -> None:
        try:
            await self._client.abort(sid)
        except DataPlaneError as err:
            log.warning("session_abort_failed", session_id=sid, error=str(err))

    # ------------------------------------------------------------------ restore

    async def restore(self, cmd: RestoreCommand, ctx: JobContext) -> JobOutcome:
        options = RestoreOptions(
            target=cmd.target_path or "/",
            items=[os.fsencode(i) for i in cmd.items],
            conflict=cmd.conflict,  # type: ignore[arg-type]  # checked by agent.commands
            # An fsync per file halves restore speed. It is needed only where a rename
            # replaces a file the operator still has (overwrite in place): a crash must
            # not leave neither copy. Otherwise one syncfs at the end makes the whole
            # restore durable before success is reported.
            durable=cmd.conflict == "overwrite",
        )

        def on_progress(files: int, nbytes: int, current_path: bytes | str) -> None:
            ctx.progress.update(files=files, nbytes=nbytes, current_path=current_path)

        entries = self._client.restore_entries(ctx.job_id)
        work = asyncio.create_task(
            restore(
                entries,
                HttpChunkFetcher(self._client, ctx.job_id),
                options,
                on_progress=on_progress,
            ),
            name=f"restore-{ctx.job_id}",
        )
        stop = asyncio.create_task(ctx.cancelled.wait(), name=f"restore-cancel-{ctx.job_id}")
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():
                work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
            await entries.aclose()
        if work.cancelled():
            return JobOutcome("cancelled", error="cancelled by the server")
        err = work.exception()
        if isinstance(err, RestoreError):
            stats = _restore_stats(err.report) if err.report else {}
            return JobOutcome("failed", error=str(err), stats=stats)
        if isinstance(err, DataPlaneError):
            return JobOutcome("failed", error=str(err), retryable=err.transient)
        if err is not None:
            raise err
        report = work.result()
        if not options.durable:
            await asyncio.to_thread(syncfs, os.fsdecode(options.target_bytes()))
        warnings = [str(w) for w in report.warnings]
        return JobOutcome(
            "succeeded_with_warnings" if report.warnings_total else "succeeded",
            warnings=warnings,
            warnings_total=report.warnings_total,
            stats=_restore_stats(report),
        )


def _backup_stats(stats: IngestStats, target: RemoteTarget) -> dict[str, Any]:
    return {
        "files": stats.files,
        "dirs": stats.dirs,
        "other": stats.other,
        "unchanged_files": stats.unchanged_files,
        "bytes_read": stats.bytes_read,
        "logical_bytes": stats.logical_bytes,
        "chunks": stats.chunks,
        "new_chunks": stats.new_chunks,
        "new_stored_bytes": target.put.new_stored_bytes,
        "bytes_uploaded": target.bytes_uploaded,
        "entries": target.entries_sent,
        "seconds": round(stats.seconds, 3),
    }


def _restore_stats(report: RestoreReport) -> dict[str, Any]:
    return {
        "files": report.files,
        "dirs": report.dirs,
        "symlinks": report.symlinks,
        "hardlinks": report.hardlinks,
        "specials": report.specials,
        "bytes": report.bytes,
        "skipped": report.skipped,
        "renamed": report.renamed,
        "failed": report.failed,
        "refused": report.refused,
    }
