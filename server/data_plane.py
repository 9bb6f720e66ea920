"""The agents' HTTP data plane: backup sessions into the pool, and restore reads.

Wire formats are in agent/protocol.py. What is checked here, for every request:
- the agent is authenticated (server/auth.py) and the job belongs to it and is running;
- a backup may reference only chunks it uploaded in this session or that its data
  source's latest recovery point references (restic/PBS rule), so dedup never answers
  "present" for another agent's data; other ids are reported missing and must be sent;
- every uploaded chunk is decoded and re-hashed before it is stored (Session.put verify);
- a restore reads only the entries and chunks of its job's recovery point and selection.

Commit order, all under the job's lock (server/job_commits.py, shared with the job
engine, which writes every final state under it): the job is read again and must still
be running (else the session is aborted and nothing is written, 409); the pool commit
(the recovery-point record, after every chunk is durable); the catalog row; the RP is
noted as committed for the job. These steps run to their end even if the request is
cancelled (storage_pool/settle.py), so a pool record never lacks its row for long. A job
ended (Stop-Job, the cloud policy, the reserve) before the commit takes the lock gets no
RP; an end asked for while the commit runs waits for it and then finds the RP, which is
kept: the job ends ``succeeded_with_warnings`` saying the stop came after the commit.
A crash between the record and the row leaves a pool RP without a catalog row, which the
next start re-adds (catalog.rebuild_from_pool runs at every start).

Free space (server/capacity.py): opening a session and every chunk upload first check the
pool's filesystem against the reserve (the upload checks in the same worker job that
writes, so the check is next to the write). Under the reserve, or when a write fails with
ENOSPC/EDQUOT, the backup fails cleanly: its session is aborted (no recovery point), the
job fails with the reserve message, the `pool_reserve` alert opens and the agent gets 507.
That failure takes the job's lock too: an upload refused while the job's commit runs
waits for it, and once the RP is committed the job is not failed (it ends as the agent
reports; the refused upload still gets 507).
"""

from __future__ import annotations

import asyncio
import collections
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
import structlog
from aiohttp import web

from agent import protocol as p
from server.alerts import POOL_RESERVE
from server.auth import AGENT_KEY
from server.capacity import (
    InsufficientStorageError,
    full_message,
    is_no_space,
    pool_capacity,
    pool_capacity_sync,
    report_capacity,
)
from server.catalog import JobState, recovery_point_labels
from server.catalog_errors import CatalogError
from server.context import ServerContext
from server.http_json import error_response, http_error, read_object
from server.ids import JobId
from server.job_commits import CommitGuard
from storage_pool import Entry, EntryType, RecoveryPoint, Session, framing
from storage_pool.errors import IntegrityError, PoolError, SessionError
from storage_pool.ids import ChunkId
from storage_pool.manifest import MANIFEST_VERSION, entry_from_wire
from storage_pool.session import PutResult
from storage_pool.settle import settle

log = structlog.get_logger()

MAX_BODY = 80 * 1024 * 1024
MAX_ENTRIES_BODY = 64 * 1024 * 1024
SESSION_IDLE_SECONDS = 3600.0
RESTORE_READ_AHEAD = 16


@dataclass(slots=True)
class BackupSession:
    id: str
    agent_id: str
    job_id: str
    data_source_id: str
    session: Session
    parent: RecoveryPoint | None
    allowed: set[ChunkId] = field(default_factory=set)
    uploaded: set[ChunkId] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class RestoreView:
    entries: list[Entry]
    chunks: set[ChunkId]


@dataclass(slots=True)
class DataPlane:
    ctx: ServerContext
    sessions: dict[str, BackupSession] = field(default_factory=dict)
    restores: dict[str, RestoreView] = field(default_factory=dict)
    # The job locks when no job engine runs (tests of the data plane alone).
    own_commits: CommitGuard = field(default_factory=CommitGuard)

    # -- lifecycle -------------------------------------------------------------

    def abort_for_job(self, job_id: str) -> None:
        for sid, s in list(self.sessions.items()):
            if s.job_id == job_id:
                s.session.abort()
                del self.sessions[sid]
                log.info("session_aborted", job_id=job_id, session_id=sid)
        self.restores.pop(job_id, None)

    def abort_all(self) -> None:
        for s in self.sessions.values():
            s.session.abort()
        self.sessions.clear()
        self.restores.clear()

    async def job_ended(self, job: Any) -> None:
        self.abort_for_job(job.id)

    async def reap_idle(self, idle_seconds: float = SESSION_IDLE_SECONDS) -> None:
        """Abort sessions nobody used for `idle_seconds`: an agent that died without
        coming back must not keep chunks protected from GC for ever. Its next call, if
        any, gets 404 and fails the job."""
        while True:
            await asyncio.sleep(min(60.0, idle_seconds / 4))
            cutoff = time.monotonic() - idle_seconds
            for sid, s in list(self.sessions.items()):
                if s.last_used < cutoff and not s.lock.locked():
                    s.session.abort()
                    self.sessions.pop(sid, None)
                    log.warning("session_reaped", job_id=s.job_id, session_id=sid)

    # -- helpers ---------------------------------------------------------------

    def commits(self) -> CommitGuard:
        """The job locks shared with the job engine (server/job_commits.py)."""
        jobs = self.ctx.jobs
        return jobs.commits if jobs is not None else self.own_commits

    async def _running_job(self, request: web.Request, job_id: str, kind: str) -> Any:
        agent = request[AGENT_KEY]
        try:
            job = await self.ctx.catalog.get_job(job_id)
        except CatalogError as err:
            raise http_error(web.HTTPNotFound, f"job {job_id} not found") from err
        if job.agent_id != agent.id or job.kind != kind:
            raise http_error(web.HTTPForbidden, f"job {job_id} is not a {kind} job of this agent")
        if job.state == JobState.QUEUED:
            # The agent's first data-plane call can overtake its MQTT "accepted" event;
            # the call itself proves the agent took the job.
            job = await self.ctx.catalog.transition_job(job.id, JobState.RUNNING)
            log.info("job_started", job_id=job.id, agent_id=agent.id, via="data_plane")
        if job.state != JobState.RUNNING:
            raise http_error(web.HTTPConflict, f"job {job_id} is {job.state}, not running")
        return job

    def _session(self, request: web.Request) -> BackupSession:
        sid = request.match_info["sid"]
        s = self.sessions.get(sid)
        if s is None or s.agent_id != request[AGENT_KEY].id:
            raise http_error(web.HTTPNotFound, f"backup session {sid} not found (ended or aborted)")
        s.last_used = time.monotonic()
        return s

    # -- backup ----------------------------------------------------------------

    async def open_session(self, request: web.Request) -> web.Response:
        body = await read_object(request)
        job_id = body.get("job_id")
        if not isinstance(job_id, str):
            return error_response(400, "field 'job_id' must be a string")
        job = await self._running_job(request, job_id, "backup")
        self.abort_for_job(job.id)  # a retried open replaces the old session
        pool = self.ctx.pool
        capacity = await pool_capacity(pool.root, self.ctx.config.pool)
        if capacity.below_reserve:
            return await self._fail_for_space(job.id, InsufficientStorageError(capacity))
        ds_id = job.data_source_id
        rps = await pool.list_recovery_points(ds_id)
        parent = rps[-1] if rps else None
        allowed: set[ChunkId] = set()
        if parent is not None:
            allowed = await pool.run(_chunks_of, pool.iter_entries_sync(parent))
        session = pool.session(ds_id, parent=parent.id if parent else None)
        sid = secrets.token_hex(12)
        self.sessions[sid] = BackupSession(
            sid, job.agent_id, job.id, ds_id, session, parent, allowed
        )
        params = pool.config.chunker
        log.info("session_opened", job_id=job.id, session_id=sid, parent=parent and parent.id)
        return web.json_response(
            {
                "session_id": sid,
                "data_source_id": ds_id,
                "parent_rp_id": parent.id if parent else None,
                "chunker": {
                    "min_size": params.min_size,
                    "avg_size": params.avg_size,
                    "max_size": params.max_size,
                },
                "compression_level": pool.config.compression_level,
                "manifest_version": MANIFEST_VERSION,
            }
        )

    async def missing(self, request: web.Request) -> web.Response:
        s = self._session(request)
        try:
            ids = [ChunkId(c) for c in p.iter_id_list(await request.read())]
        except p.ProtocolError as err:
            return error_response(400, f"missing-chunk query: {err}")
        # Membership tests only: a union of the parent's chunk set per call would copy it.
        known = [c for c in dict.fromkeys(ids) if c in s.allowed or c in s.uploaded]
        absent = set(await s.session.missing(known)) if known else set()
        known_set = set(known)
        out = [c for c in dict.fromkeys(ids) if c in absent or c not in known_set]
        return web.Response(body=b"".join(out), content_type="application/octet-stream")

    async def put_chunks(self, request: web.Request) -> web.Response:
        s = self._session(request)
        raw = await request.read()
        try:
            chunks = []
            for cid, frame in p.iter_records(raw):
                _, size, _ = framing.read_header(frame)
                chunks.append(framing.EncodedChunk(ChunkId(cid), bytes(frame), size))
        except (p.ProtocolError, framing.FrameError) as err:
            return error_response(400, f"chunk upload: {err}")
        root, settings = self.ctx.pool.root, self.ctx.config.pool

        def checked_put() -> PutResult:
            capacity = pool_capacity_sync(root, settings)
            if capacity.below_reserve:
                raise InsufficientStorageError(capacity)
            return s.session.put_sync(chunks, verify=True)

        try:
            result = await self.ctx.pool.run(checked_put)
        except IntegrityError as err:
            log.warning("chunk_rejected", job_id=s.job_id, agent_id=s.agent_id, error=str(err))
            return error_response(422, f"chunk rejected: {err}")
        except InsufficientStorageError as err:
            return await self._fail_for_space(s.job_id, err)
        except PoolError as err:
            if is_no_space(err):
                return await self._fail_for_space(s.job_id, err)
            log.error("chunk_store_failed", job_id=s.job_id, error=str(err))
            return error_response(507, f"storing chunks failed: {err}")
        s.uploaded.update(c.id for c in chunks)
        return web.json_response(
            {
                "chunks": result.chunks,
                "new_chunks": result.new_chunks,
                "new_stored_bytes": result.new_stored_bytes,
            }
        )

    async def add_entries(self, request: web.Request) -> web.Response:
        s = self._session(request)
        raw = await request.read()
        unpacker = msgpack.Unpacker(
            raw=False, max_buffer_size=MAX_ENTRIES_BODY, strict_map_key=False
        )
        unpacker.feed(raw)
        entries: list[Entry] = []
        try:
            for doc in unpacker:
                entries.append(entry_from_wire(doc))
        except (ValueError, msgpack.UnpackException) as err:
            return error_response(400, f"manifest entries: {err}")
        async with s.lock:  # entries must arrive in order; one batch at a time
            try:
                await s.session.add_entries(entries)
            except SessionError as err:
                return error_response(400, f"manifest entries: {err}")
            except PoolError as err:
                if is_no_space(err):
                    return await self._fail_for_space(s.job_id, err)
                raise
        return web.json_response({"entries": len(entries)})

    async def commit(self, request: web.Request) -> web.Response:
        s = self._session(request)
        body = await read_object(request)
        job = await self._running_job(request, s.job_id, "backup")
        ds = await self.ctx.catalog.get_data_source(s.data_source_id)
        labels = recovery_point_labels(request[AGENT_KEY], ds, job.id)
        warnings = body.get("warnings", 0)
        if isinstance(warnings, int) and warnings > 0:
            labels["warnings"] = str(warnings)
        outcome = await settle(self._commit_locked(s, labels), name=f"commit-{job.id}")
        if isinstance(outcome, PoolError):
            return await self._fail_for_space(s.job_id, outcome)
        return outcome

    async def _commit_locked(
        self, s: BackupSession, labels: dict[str, str]
    ) -> web.Response | PoolError:
        """The commit's steps under the job's lock (module docstring); a no-space error
        is returned, to fail the job once the lock is free."""
        async with s.lock, self.commits().ending(s.job_id):
            try:
                job = await self.ctx.catalog.get_job(JobId(s.job_id))
                if job.state != JobState.RUNNING:
                    s.session.abort()
                    log.warning("commit_refused_job_ended", job_id=s.job_id, state=job.state)
                    return error_response(
                        409, f"job {s.job_id} is {job.state}: nothing of it was committed"
                    )
                rp = await s.session.commit(labels)
            except (SessionError, PoolError) as err:
                if is_no_space(err):
                    return err
                return error_response(400, f"commit: {err}")
            finally:
                self.sessions.pop(s.id, None)
            await self.ctx.catalog.add_recovery_point(rp)
            self.commits().committed(s.job_id, rp)
        log.info("recovery_point_committed", job_id=s.job_id, rp_id=rp.id, files=rp.files)
        return web.json_response({"rp_id": rp.id})

    async def abort(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        s = self.sessions.get(sid)
        if s is not None and s.agent_id == request[AGENT_KEY].id:
            s.session.abort()
            del self.sessions[sid]
        return web.json_response({"aborted": sid})

    async def _fail_for_space(
        self, job_id: str, err: InsufficientStorageError | PoolError
    ) -> web.Response:
        """End the backup `job_id` for lack of space: fail the job with the reason, abort
        its session (nothing of it becomes visible), open the alert, answer 507.

        The job fails before the session goes: a parallel upload of the same agent then
        gets 404 for the aborted session, and its failure report must find the job
        already failed with this reason (the catalog keeps the first final state).
        Under the job's lock: if its RP was committed meanwhile, the job is left to end
        as the agent reports (module docstring)."""
        pool_path = self.ctx.pool.root
        if isinstance(err, InsufficientStorageError):
            message = str(err)
        else:
            message = full_message(pool_path, err)
        async with self.commits().ending(job_id) as committed:
            if committed is None:
                await self.ctx.catalog.transition_job(JobId(job_id), JobState.FAILED, error=message)
                self.abort_for_job(job_id)
        if committed is not None:
            log.warning("no_space_after_commit", job_id=job_id, rp_id=committed.id, error=message)
        else:
            log.error("backup_failed_no_space", job_id=job_id, error=message)
        if isinstance(err, InsufficientStorageError):
            await report_capacity(err.capacity, self.ctx.alerts)
        elif self.ctx.alerts is not None:
            await self.ctx.alerts.open(POOL_RESERVE, str(pool_path), message, severity="critical")
        return error_response(507, message)

    # -- restore ---------------------------------------------------------------

    async def _restore_view(self, request: web.Request) -> RestoreView:
        job_id = request.match_info["job_id"]
        job = await self._running_job(request, job_id, "restore")
        view = self.restores.get(job.id)
        if view is None:
            rp = await self.ctx.pool.get_recovery_point(job.params["rp_id"])
            items = [os.fsencode(i) for i in job.params.get("items") or []]
            view = await self.ctx.pool.run(_select, self.ctx.pool.iter_entries_sync(rp), items)
            self.restores[job.id] = view
        return view

    async def restore_entries(self, request: web.Request) -> web.StreamResponse:
        view = await self._restore_view(request)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-msgpack"})
        await resp.prepare(request)
        packer = msgpack.Packer(use_bin_type=True)
        buf: list[bytes] = []
        for entry in view.entries:
            buf.append(packer.pack(entry.to_wire()))
            if len(buf) >= 1000:
                await resp.write(b"".join(buf))
                buf.clear()
        await resp.write(b"".join(buf))
        await resp.write_eof()
        return resp

    async def restore_chunks(self, request: web.Request) -> web.StreamResponse:
        view = await self._restore_view(request)
        try:
            ids = [ChunkId(c) for c in p.iter_id_list(await request.read())]
        except p.ProtocolError as err:
            return error_response(400, f"chunk request: {err}")
        foreign = [c for c in ids if c not in view.chunks]
        if foreign:
            return error_response(
                403, f"chunk {foreign[0].hex()} is not part of this restore's recovery point"
            )
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        pool = self.ctx.pool
        # One chunk is one file: on a cold cache each read is a random disk read, so keep
        # several in flight while the response is written.
        ahead: collections.deque[asyncio.Task[bytes]] = collections.deque()
        pending = iter(ids)
        try:
            for cid in ids:
                while len(ahead) < RESTORE_READ_AHEAD and (nxt := next(pending, None)):
                    ahead.append(asyncio.ensure_future(pool.read_chunk_frame(nxt)))
                try:
                    frame = await ahead.popleft()
                except PoolError as err:
                    log.error("restore_chunk_unreadable", chunk=cid.hex(), error=str(err))
                    raise  # the truncated stream tells the agent; the log tells the operator
                await resp.write(p.record_header(cid, len(frame)))
                await resp.write(frame)
        finally:
            for task in ahead:
                task.cancel()
        await resp.write_eof()
        return resp

    def routes(self) -> Iterable[web.RouteDef]:
        base = p.AGENT_API
        return [
            web.post(f"{base}/sessions", self.open_session),
            web.post(f"{base}/sessions/{{sid}}/missing", self.missing),
            web.post(f"{base}/sessions/{{sid}}/chunks", self.put_chunks),
            web.post(f"{base}/sessions/{{sid}}/entries", self.add_entries),
            web.post(f"{base}/sessions/{{sid}}/commit", self.commit),
            web.delete(f"{base}/sessions/{{sid}}", self.abort),
            web.get(f"{base}/restores/{{job_id}}/entries", self.restore_entries),
            web.post(f"{base}/restores/{{job_id}}/chunks", self.restore_chunks),
        ]


def _chunks_of(entries: Iterator[Entry]) -> set[ChunkId]:
    out: set[ChunkId] = set()
    for e in entries:
        out.update(e.chunk_ids)
    return out


def _selected(path: bytes, items: Sequence[bytes]) -> bool:
    return any(path == i or path.startswith(i + b"/") for i in items)


def _select(entries: Iterator[Entry], items: Sequence[bytes]) -> RestoreView:
    """The entries a restore writes, in manifest order, and the chunks they need.

    A secondary hardlink whose data-carrying first member is not selected takes over the
    data, so the restore's first member of each group always carries the chunks."""
    items = [i.strip(b"/") for i in items if i.strip(b"/")]
    leaders: dict[int, Entry] = {}
    emitted: set[int] = set()
    out: list[Entry] = []
    chunks: set[ChunkId] = set()
    for entry in entries:
        e = entry
        group = e.hardlink_group
        if group is not None and group not in leaders:
            leaders[group] = e
        if items and not _selected(e.path, items):
            continue
        if group is not None and e.type is EntryType.FILE:
            if group not in emitted and not e.chunk_ids and leaders[group].chunk_ids:
                lead = leaders[group]
                e = replace(
                    e,
                    chunk_ids=lead.chunk_ids,
                    chunk_sizes=lead.chunk_sizes,
                    holes=lead.holes,
                    size=lead.size,
                )
            emitted.add(group)
        chunks.update(e.chunk_ids)
        out.append(e)
    return RestoreView(out, chunks)
