"""Verify jobs (``Start-Verify``): the pool, repaired from the vault, or the vault itself.

`VerifyRunner.start` queues a VERIFY server job (params ``{"tier": "disk"|"cloud",
"sample": float|None, "seed": int|None}``); one verify job runs at a time, oldest first.

Disk (`verify_disk`): `StoragePool.verify` re-hashes every chunk file (or a sample),
quarantines damaged ones and names the disk RPs they break. When a vault is registered
it is the repair source (`VaultChunkSource`): each damaged or missing chunk the vault
holds is fetched, checked against its id (AEAD and hash, reader.py) and written back, so
the RPs it broke are whole again. A vault that cannot be opened does not stop the check;
the result says why nothing was repaired.

The cloud policy (server/cloud_gate.py, when the runner has a `gate`): reading chunks from
the vault to heal the pool is a restore from cloud. When the policy does not allow one, a
disk verify still runs, without healing: the vault is not opened, damaged chunks stay
quarantined, and the result's ``repair_unavailable`` says healing was skipped and why
(``repair_skipped_by_policy`` is true). The gate is asked again before each chunk is
fetched, so a state change during the check stops healing there (the chunk's
``repair_failure`` names the reason). A disk verify without healing is never refused.

Cloud (`verify_cloud`): for every live online RP the index segments it pins and its file
list (the pool manifest chunks, stored in packs) are read, then every blob the RP
references (or a seeded random sample of the distinct ones; manifest chunks are always
read) is fetched and opened: a blob that fails its AEAD or hash, a pack that is gone or a
chunk no segment locates is damaged, and every online RP referencing it is broken.
Manifests the vault refuses (tampered, rolled back) and catalog entries whose manifest
is gone are reported too. Reads only: the vault is never changed.

Outcome: clean, or every problem repaired: succeeded (repairs counted as warnings);
anything left damaged: failed, with the full result document either way. A transient
storage error past the retry budget fails the job as retryable; a server stop fails a
running job as retryable.

Stop-Job (`cancel`, reached through `JobManager.server_cancel`, server/job_stop.py): a
queued job is cancelled at once; a running one has its task cancelled and ends cancelled
("cancelled by operator") before `cancel` returns, with no result. The partial report is
discarded on purpose: the engine assembles its report only at the end, and a check cut
short says nothing about what it did not read, so a half document would read as "clean"
where it is merely unchecked. What the check already changed stays, each piece complete on
its own: quarantined chunk files, the index rows it corrected (that step runs to its end in
its thread), and chunks repaired from the vault (each written atomically). Threads already
hashing a batch finish that batch and their results are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import structlog

from server.catalog import Catalog, JobKind, JobRow, JobState
from server.catalog_errors import ConflictError, InvalidStateError
from server.catalog_rows import JobTrigger
from server.cloud_status import Operation
from server.ids import JobId
from server.loops import repeat
from server.vault_registry import VaultRegistry, VaultRegistryError
from server.vault_sync import registered_vault
from storage_pool import StoragePool, VerifyReport, framing
from storage_pool.errors import PoolError
from storage_pool.ids import ChunkId
from storage_pool.manifest import iter_entries
from storage_pool.vault.backend import NotFound, TransientError, VaultBackendError
from storage_pool.vault.catalog import ManifestStatus
from storage_pool.vault.format_errors import VaultFormatError
from storage_pool.vault.reader import ChunkNotInVaultError, OnlineRecoveryPoint, VaultReader
from storage_pool.vault.vault import Vault

if TYPE_CHECKING:
    from server.cloud_gate import CloudGate

__all__ = [
    "TIERS",
    "VaultChunkSource",
    "VerifyParamError",
    "VerifyRunner",
    "VerifyTierError",
    "verify_cloud",
    "verify_disk",
]

log = structlog.get_logger()

TIERS: Final = ("disk", "cloud")
IDLE_SECONDS: Final = 1.0
CHECK_BATCH: Final = 256
SHUTDOWN_ERROR: Final = "the server shut down while it ran"
CANCELLED_ERROR: Final = "cancelled by operator"
# What a damaged vault object raises while it is read (other errors end the job).
_DAMAGE: Final = (VaultFormatError, NotFound)


class VerifyTierError(InvalidStateError):
    """Start-Verify -Tier Cloud without a registered vault (409)."""

    def __init__(self, message: str) -> None:
        super().__init__("verify", "-", message)


class VerifyParamError(ValueError):
    """A bad tier or sample (400)."""


def _hex(cid: ChunkId) -> str:
    return cid.hex()


# -- disk --------------------------------------------------------------------------------


class VaultChunkSource:
    """`storage_pool.ChunkSource` over the vault: a chunk's verified plaintext, or None
    when the vault does not hold it or its copy is damaged too (the reason is kept).

    Chunks are located through the location cache first; at the first miss the index
    segments of every live online RP are loaded (a fresh data dir has no cache). With a
    `gate`, each fetch first asks the cloud policy for a restore from cloud."""

    def __init__(self, vault: Vault, gate: CloudGate | None = None) -> None:
        self.reader = VaultReader(vault)
        self.gate = gate
        self.failures: dict[ChunkId, str] = {}
        self.refused: str | None = None  # why the policy stopped healing, once it did
        self._segments_loaded = False

    async def _load_all_segments(self) -> None:
        self._segments_loaded = True
        listing = await self.reader.list_online_rps()
        for orp in listing.rps:
            if orp.status is ManifestStatus.LIVE:
                with contextlib.suppress(*_DAMAGE):
                    await self.reader.load_locations(orp)

    async def fetch_chunk(self, cid: ChunkId) -> bytes | None:
        refused = healing_refused(self.gate)
        if refused is not None:
            if self.refused is None:
                log.warning("verify_healing_stopped", reason=refused)
            self.refused = self.failures[cid] = refused
            return None
        try:
            return await self.reader.read_chunk(cid)
        except ChunkNotInVaultError:
            if self._segments_loaded:
                self.failures[cid] = "not in the vault"
                return None
        except _DAMAGE as err:
            self.failures[cid] = f"the vault's copy is damaged too: {err}"
            return None
        await self._load_all_segments()
        return await self.fetch_chunk(cid)


def healing_refused(gate: CloudGate | None) -> str | None:
    """Why the cloud policy does not allow healing from the vault now; None if it does."""
    if gate is None:
        return None
    decision = gate.decision(Operation.RESTORE_FROM_CLOUD)
    return None if decision.allowed else f"healing from the vault skipped: {decision.reason}"


def _disk_doc(
    report: VerifyReport,
    sample: float | None,
    source: VaultChunkSource | None,
    why: str | None,
    *,
    by_policy: bool = False,
) -> dict[str, Any]:
    problems = sorted(report.problems.values(), key=lambda p: p.id)
    return {
        "tier": "disk",
        "sample": sample,
        "chunk_files": report.chunk_files,
        "checked_chunks": report.checked_chunks,
        "checked_bytes": report.checked_bytes,
        "recovery_points": report.recovery_points,
        "damaged_chunks": len(problems),
        "repaired_chunks": sum(1 for p in problems if p.repaired),
        "problems": [
            {
                "chunk": _hex(p.id),
                "kind": p.kind,
                "reason": p.reason,
                "recovery_points": sorted(p.recovery_points),
                "repaired": p.repaired,
                "repair_failure": None
                if p.repaired or source is None
                else source.failures.get(p.id),
            }
            for p in problems
        ],
        "broken_recovery_points": sorted(report.broken_recovery_points),
        "manifest_errors": [
            {"recovery_point": rp, "reason": why}
            for rp, why in sorted(report.manifest_errors.items())
        ],
        "foreign_entries": [str(p) for p in report.foreign_entries],
        "index_rows_dropped": report.index_rows_dropped,
        "index_rows_added": report.index_rows_added,
        "repair_source": "vault" if source is not None else None,
        "repair_unavailable": why,
        "repair_skipped_by_policy": by_policy,
    }


async def verify_disk(
    pool: StoragePool,
    registry: VaultRegistry | None,
    *,
    sample: float | None = None,
    seed: int | None = None,
    gate: CloudGate | None = None,
) -> dict[str, Any]:
    """Check the pool, repairing from the registered vault if there is one and `gate`
    (the cloud policy; None: no policy) allows a restore from cloud."""
    async with contextlib.AsyncExitStack() as stack:
        source: VaultChunkSource | None = None
        why: str | None = None
        refused = healing_refused(gate)
        if registry is None or await registry.registration() is None:
            why = "no vault is registered"
        elif refused is not None:
            why = refused
            log.warning("verify_healing_skipped", reason=refused)
        else:
            try:
                vault = await stack.enter_async_context(registered_vault(registry))
                source = VaultChunkSource(vault, gate)
            except (VaultBackendError, VaultFormatError, VaultRegistryError) as err:
                why = f"the vault could not be opened: {type(err).__name__}: {err}"
                log.warning("verify_repair_source_unavailable", error=why)
        report = await pool.verify(sample=sample, seed=seed, repair_from=source)
        if source is not None and source.refused is not None:
            why = source.refused
        by_policy = refused is not None or (source is not None and source.refused is not None)
        return _disk_doc(report, sample, source, why, by_policy=by_policy)
    raise AssertionError("unreachable")  # pragma: no cover  (mypy: the stack may swallow)


# -- cloud -------------------------------------------------------------------------------


@dataclass(slots=True)
class _CloudCheck:
    reader: VaultReader
    damaged: dict[ChunkId, str] = field(default_factory=dict)
    good: set[ChunkId] = field(default_factory=set)
    checked_bytes: int = 0

    async def check(self, ids: Sequence[ChunkId]) -> dict[ChunkId, bytes]:
        """Read `ids` (unique); the frames of the sound ones, the rest noted damaged."""
        todo = [c for c in ids if c not in self.good and c not in self.damaged]
        frames: dict[ChunkId, bytes] = {}
        for i in range(0, len(todo), CHECK_BATCH):
            batch = todo[i : i + CHECK_BATCH]
            try:
                got = {cid: f async for cid, f in self.reader.read_frames(batch)}
            except _DAMAGE:
                got = {}
                for cid in batch:  # one by one, to name exactly the damaged blobs
                    try:
                        got.update({c: f async for c, f in self.reader.read_frames([cid])})
                    except _DAMAGE as err:
                        self.damaged[cid] = f"{type(err).__name__}: {err}"
            for cid, frame in got.items():
                self.good.add(cid)
                self.checked_bytes += len(frame)
            frames.update(got)
        return frames


def _file_chunk_ids(orp: OnlineRecoveryPoint, frames: dict[ChunkId, bytes]) -> list[ChunkId]:
    rp = orp.recovery_point
    pieces = (framing.decode(frames[c]) for c in rp.manifest_chunks)
    ids: dict[ChunkId, None] = {}
    for entry in iter_entries(pieces, f"online recovery point {orp.name}"):
        ids.update(dict.fromkeys(entry.chunk_ids))
    return list(ids)


async def verify_cloud(
    vault: Vault, *, sample: float | None = None, seed: int | None = None
) -> dict[str, Any]:
    """Check the vault's live online RPs (module docstring); reads only."""
    reader = VaultReader(vault)
    listing = await reader.list_online_rps()
    live = [r for r in listing.rps if r.status is ManifestStatus.LIVE]
    check = _CloudCheck(reader)
    users: dict[ChunkId, list[str]] = {}
    rp_errors: dict[str, str] = {}

    def use(cids: Iterable[ChunkId], name: str) -> None:
        for cid in cids:
            users.setdefault(cid, []).append(name)

    file_ids: dict[ChunkId, None] = {}
    for orp in live:
        try:
            await reader.load_locations(orp)
        except _DAMAGE as err:
            rp_errors[orp.name] = f"an index segment is unreadable: {type(err).__name__}: {err}"
            continue
        manifest_chunks = list(dict.fromkeys(orp.recovery_point.manifest_chunks))
        use(manifest_chunks, orp.name)
        frames = await check.check(manifest_chunks)
        if len(frames) < len(manifest_chunks) and any(c in check.damaged for c in manifest_chunks):
            rp_errors[orp.name] = "its file list is stored in damaged blobs"
            continue
        try:
            ids = await asyncio.to_thread(_file_chunk_ids, orp, frames)
        except (PoolError, KeyError, ValueError) as err:
            rp_errors[orp.name] = f"its file list is unreadable: {err}"
            continue
        use(ids, orp.name)
        file_ids.update(dict.fromkeys(ids))

    candidates = sorted(c for c in file_ids if c not in check.good and c not in check.damaged)
    if sample is not None and sample < 1.0:
        rng = random.Random(seed)
        candidates = [c for c in candidates if rng.random() < sample]
    await check.check(candidates)

    broken: dict[str, list[str]] = {name: [why] for name, why in rp_errors.items()}
    for cid in check.damaged:
        for name in dict.fromkeys(users.get(cid, [])):
            broken.setdefault(name, []).append(f"chunk {_hex(cid)} is damaged")
    by_name = {r.name: r for r in live}
    return {
        "tier": "cloud",
        "sample": sample,
        "catalog_generation": listing.catalog_generation,
        "online_recovery_points": len(live),
        "chunks_total": len(users),
        "checked_chunks": len(check.good) + len(check.damaged),
        "checked_bytes": check.checked_bytes,
        "damaged_chunks": len(check.damaged),
        "damaged": [
            {
                "chunk": _hex(cid),
                "reason": why,
                "online_recovery_points": sorted(set(users.get(cid, []))),
            }
            for cid, why in sorted(check.damaged.items())
        ],
        "broken_online_recovery_points": [
            {
                "id": name,
                "disk_rp_id": by_name[name].id if name in by_name else None,
                "data_source_id": by_name[name].data_source if name in by_name else None,
                "reasons": reasons[:10],
                "problems": len(reasons),
            }
            for name, reasons in sorted(broken.items())
        ],
        "refused_manifests": [{"manifest": n, "reason": why} for n, why in listing.refused],
        "missing_manifests": [e.name for e in listing.missing],
    }


def _problems(doc: dict[str, Any]) -> int:
    if doc["tier"] == "disk":
        return (
            sum(1 for p in doc["problems"] if not p["repaired"])
            + len(doc["manifest_errors"])
            + len(doc["foreign_entries"])
        )
    return (
        len(doc["broken_online_recovery_points"])
        + len(doc["refused_manifests"])
        + len(doc["missing_manifests"])
    )


# -- jobs --------------------------------------------------------------------------------


def check_sample(sample: Any) -> float | None:
    if sample is None:
        return None
    if isinstance(sample, bool) or not isinstance(sample, int | float) or not 0 < sample <= 1:
        raise VerifyParamError(f"sample must be a fraction in (0, 1], got {sample!r}")
    return float(sample)


@dataclass(slots=True)
class _Running:
    job_id: JobId
    task: asyncio.Task[None] | None = None
    cancelled_by_operator: bool = False


class VerifyRunner:
    def __init__(
        self,
        catalog: Catalog,
        pool: StoragePool,
        registry: VaultRegistry,
        clock: Callable[[], float],
        *,
        gate: CloudGate | None = None,
    ) -> None:
        self.catalog = catalog
        # The cloud policy healing from the vault asks (module docstring); the daemon sets
        # it once the health monitor runs. None: healing is never refused.
        self.gate = gate
        self._pool = pool
        self._registry = registry
        self._clock = clock
        self._start_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._running: _Running | None = None

    async def start(
        self,
        tier: str = "disk",
        *,
        sample: float | None = None,
        seed: int | None = None,
        trigger: JobTrigger = JobTrigger.MANUAL,
    ) -> JobRow:
        if not isinstance(tier, str) or tier.lower() not in TIERS:
            raise VerifyParamError(f"tier must be disk or cloud, got {tier!r}")
        tier = tier.lower()
        sample = check_sample(sample)
        async with self._start_lock:
            if tier == "cloud" and await self._registry.registration() is None:
                raise VerifyTierError(
                    "no vault is registered with this server: Start-Verify -Tier Cloud needs"
                    " one (New-Vault, Register-Vault)"
                )
            for state in (JobState.QUEUED, JobState.RUNNING):
                for job in await self.catalog.list_jobs(state=state, limit=10_000):
                    if job.kind is JobKind.VERIFY:
                        raise ConflictError(
                            "job", job.id, f"verify job {job.id} is already {job.state.value}"
                        )
            job = await self.catalog.create_server_job(
                JobKind.VERIFY, {"tier": tier, "sample": sample, "seed": seed}, trigger
            )
        log.info("verify_queued", job_id=job.id, tier=tier, sample=sample)
        self._wake.set()
        return job

    async def run(self) -> None:
        await repeat(
            self.tick,
            failed_event="verify_tick_failed",
            interval=lambda: IDLE_SECONDS,
            wake=self._wake,
        )

    async def tick(self) -> list[JobId]:
        """Run the queued verify jobs, oldest first, one after the other."""
        queued = [
            j
            for j in await self.catalog.list_jobs(state=JobState.QUEUED, limit=10_000)
            if j.kind is JobKind.VERIFY
        ]
        done: list[JobId] = []
        for job in sorted(queued, key=lambda j: j.created_at):
            # Stop-Job may have cancelled it while an older one ran.
            if (await self.catalog.get_job(job.id)).state is not JobState.QUEUED:
                continue
            await self.run_job(job)
            done.append(job.id)
        return done

    async def run_job(self, job: JobRow) -> JobRow:
        entry = _Running(job.id)
        entry.task = asyncio.create_task(self._execute(job, entry), name=f"verify-{job.id}")
        self._running = entry
        try:
            # Shielded: only `cancel` and a cancellation of this caller (a server stop)
            # end the job's task, and the caller's own cancellation is never lost.
            await asyncio.shield(entry.task)
        except asyncio.CancelledError:
            entry.task.cancel()
            await asyncio.wait({entry.task})
            raise
        finally:
            self._running = None
        return await self.catalog.get_job(job.id)

    async def cancel(self, job: JobRow) -> JobRow:
        """Stop-Job (module docstring): the job's row once it has ended."""
        if job.kind is not JobKind.VERIFY:
            raise InvalidStateError("job", job.id, f"job {job.id} is not a verify job")
        entry = self._running
        if entry is not None and entry.job_id == job.id and entry.task is not None:
            entry.cancelled_by_operator = True
            entry.task.cancel()
            log.info("verify_stop_requested", job_id=job.id)
            await asyncio.wait({entry.task})
        elif job.state is JobState.QUEUED:
            with contextlib.suppress(InvalidStateError):  # it started or ended meanwhile
                await self.catalog.transition_job(job.id, JobState.CANCELLED, error=CANCELLED_ERROR)
        return await self.catalog.get_job(job.id)

    async def _execute(self, job: JobRow, entry: _Running) -> None:
        params = job.params or {}
        try:
            await self.catalog.transition_job(job.id, JobState.RUNNING)
            tier = params.get("tier", "disk")
            sample = check_sample(params.get("sample"))
            seed = params.get("seed")
            seed = seed if isinstance(seed, int) else None
            if tier == "cloud":
                async with registered_vault(self._registry) as vault:
                    doc = await verify_cloud(vault, sample=sample, seed=seed)
            else:
                doc = await verify_disk(
                    self._pool, self._registry, sample=sample, seed=seed, gate=self.gate
                )
        except asyncio.CancelledError:
            if entry.cancelled_by_operator:
                await self._end(job.id, JobState.CANCELLED, error=CANCELLED_ERROR)
                return  # `cancel` cancelled this task; nothing above it is being stopped
            await self._end(job.id, JobState.FAILED, error=SHUTDOWN_ERROR, retryable=True)
            raise
        except TransientError as err:
            await self._end(
                job.id, JobState.FAILED, error=f"the vault storage failed: {err}", retryable=True
            )
            return
        except (VaultBackendError, VaultFormatError, VaultRegistryError, InvalidStateError) as err:
            await self._end(job.id, JobState.FAILED, error=f"{type(err).__name__}: {err}")
            return
        except Exception as err:
            log.exception("verify_crashed", job_id=job.id)
            await self._end(
                job.id, JobState.FAILED, error=f"internal error: {type(err).__name__}: {err}"
            )
            return
        left = _problems(doc)
        repaired = doc.get("repaired_chunks", 0)
        log.info("verify_finished", job_id=job.id, tier=doc["tier"], problems=left)
        if left:
            what = "the pool" if doc["tier"] == "disk" else "the vault"
            await self.catalog.transition_job(
                job.id,
                JobState.FAILED,
                error=f"verify found {left} problem(s) in {what}; see the job's result",
                result=doc,
            )
        elif repaired:
            await self.catalog.transition_job(
                job.id, JobState.SUCCEEDED_WITH_WARNINGS, result=doc, warnings=repaired
            )
        else:
            await self.catalog.transition_job(job.id, JobState.SUCCEEDED, result=doc)

    async def _end(
        self, job_id: JobId, state: JobState, *, error: str, retryable: bool | None = None
    ) -> None:
        log.warning("verify_ended", job_id=job_id, state=state.value, error=error)
        with contextlib.suppress(Exception):
            await asyncio.shield(
                self.catalog.transition_job(job_id, state, error=error, retryable=retryable)
            )
