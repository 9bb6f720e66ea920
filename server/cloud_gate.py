"""The cloud policy at every job start and while jobs run (the table in server/cloud_status.py).

The operation a job is, for the policy (`operation_of`):

- a backup job (agent -> pool): backup to disk;
- an online backup job (pool -> vault): backup to cloud;
- a restore job from the pool: restore from disk;
- a restore job with ``from_cloud`` in its params (``Start-Restore -FromCloud``, or the
  automatic fallback when the disk copy of the RP is gone, server/cloud_restore.py): restore
  from cloud while its server phase re-seeds the pool from the vault (the job is held in
  server/jobs.py). Once released, the agent reads the re-seeded RP from the pool like any
  other restore: from then on it is a restore from disk. The two columns of the table differ
  only when no vault is registered;
- reading the vault outside a job of those kinds is a restore from cloud too: a vault sync
  (`sync_registered`, server/vault_sync.py, with the gate: refused with the policy's
  reason) and the healing of pool chunks from the vault by a disk verify
  (server/verify_jobs.py: the verify runs without healing and its result says why);
- prune, gc and verify jobs themselves are not in the table: the policy never stops them
  (a disk verify without healing is always allowed).

Starts. `JobManager.start_backup` / `start_restore` and `OnlineBackupRunner.start` /
`start_group` call `check`, which raises `CloudPolicyRefused` (the message names the
connectivity and the vault state): the REST API answers 409 with it (CLI exit 1), the
schedulers store the job as failed with it. A queued job is asked again when it is
dispatched and fails with the reason if the answer changed.

Running jobs. `on_change` (subscribed to the health monitor, server/cloud_health.py) and the
job loops' ticks stop the jobs whose operation is no longer allowed, each at its safe point,
with the same semantics as Stop-Job except that the job ends ``failed`` (not ``cancelled``,
not retryable) with the policy's reason, so Get-Job and the failed-job alert say why:

- backup to disk: the job fails at once; its upload session is aborted through
  `JobManager.on_final` (server/data_plane.py `job_ended`), so nothing of it becomes an RP
  (the commit is the only step that makes an RP visible, and it checks under the job's
  lock, server/job_commits.py, that the job is still running); a stop that comes while
  the commit runs waits for it and then keeps the RP (the job ends succeeded with
  warnings, saying so); the agent gets ``cmd.cancel`` and its later ``cancelled`` result
  changes nothing (the first final state wins);
- restore from disk: the job fails and the agent is told to cancel (files already written
  stay, as with Stop-Job);
- restore from cloud, while it re-seeds: the job fails and the re-seed task is cancelled
  and waited for; its pool session is aborted (chunks already fetched stay unreferenced
  until GC), and a pool commit it had started ends with its catalog row;
- backup to cloud: the engine's stop event, checked between batches of packs
  (storage_pool/vault/uploader.py); packs already uploaded stay in the vault and the next
  online backup adopts them, so nothing is uploaded twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

import structlog

from server.catalog_rows import JobKind, JobRow
from server.cloud_status import (
    CloudPolicyRefused,
    CloudStatus,
    Decision,
    Operation,
    decide,
    decisions,
)
from server.ids import JobId

if TYPE_CHECKING:
    from server.jobs import JobManager
    from server.online_backup import OnlineBackupRunner

__all__ = ["CloudGate", "operation_of", "refusals"]

log = structlog.get_logger()


def operation_of(job: JobRow, *, held: bool = False) -> Operation | None:
    """The policy's operation for `job`; `held`: a restore still in its server phase."""
    if job.kind is JobKind.BACKUP:
        return Operation.BACKUP_TO_DISK
    if job.kind is JobKind.ONLINE_BACKUP:
        return Operation.BACKUP_TO_CLOUD
    if job.kind is JobKind.RESTORE:
        if job.params.get("from_cloud") is True and held:
            return Operation.RESTORE_FROM_CLOUD
        return Operation.RESTORE_FROM_DISK
    return None


def restore_operation(params: Mapping[str, object]) -> Operation:
    """The operation a new restore job with `params` starts as."""
    if params.get("from_cloud") is True:
        return Operation.RESTORE_FROM_CLOUD
    return Operation.RESTORE_FROM_DISK


def refusals(status: CloudStatus) -> dict[Operation, Decision]:
    """The operations `status` does not allow, with their reasons."""
    return {op: d for op, d in decisions(status).items() if not d.allowed}


class CloudGate:
    """Asks the policy with the current status; stops what a change no longer allows.

    `status` is the health monitor's `status` (any callable returning a `CloudStatus`);
    `jobs` and `online` are the job loops it stops jobs of (None: none of that kind)."""

    def __init__(
        self,
        status: Callable[[], CloudStatus],
        *,
        jobs: JobManager | None = None,
        online: OnlineBackupRunner | None = None,
    ) -> None:
        self.status = status
        self.jobs = jobs
        self.online = online

    def decision(self, operation: Operation) -> Decision:
        return decide(operation, self.status())

    def check(self, operation: Operation) -> None:
        """Raise `CloudPolicyRefused` when `operation` may not start now."""
        decision = self.decision(operation)
        if not decision.allowed:
            log.warning("cloud_policy_refused", operation=operation.value, reason=decision.reason)
            raise CloudPolicyRefused(decision)

    def refused(self) -> dict[Operation, Decision]:
        return refusals(self.status())

    async def on_change(self, old: CloudStatus, new: CloudStatus) -> None:
        """The health monitor's callback: stop the jobs `new` no longer allows."""
        log.info("cloud_policy_enforcing", old=old.summary(), new=new.summary())
        await self.enforce(new)

    async def enforce(self, status: CloudStatus | None = None) -> list[JobId]:
        """Stop the queued and running jobs `status` (default: now) does not allow; the ids
        of the jobs stopped. One loop's failure does not keep the other's jobs running."""
        refused = refusals(self.status() if status is None else status)
        if not refused:
            return []
        stopped: list[JobId] = []
        if self.jobs is not None:
            with _logged("cloud_policy_stop_failed", loop="jobs"):
                stopped.extend(await self.jobs.stop_refused(refused))
        cloud = refused.get(Operation.BACKUP_TO_CLOUD)
        if self.online is not None and cloud is not None:
            with _logged("cloud_policy_stop_failed", loop="online"):
                stopped.extend(await self.online.stop_refused(cloud.reason))
        if stopped:
            log.warning("cloud_policy_stopped_jobs", jobs=list(stopped))
        return stopped


@contextlib.contextmanager
def _logged(event: str, **kw: str) -> Iterator[None]:
    # The monitor's callback is a task boundary: log, never let one loop's error escape.
    try:
        yield
    except Exception:
        log.exception(event, **kw)
