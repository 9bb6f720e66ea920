"""Unregister-Vault: this server forgets its vault; the vault keeps everything it holds.

In order, nothing changed until every check passed (`VaultRegistry.unregister` holds the
registry's lock across 1-4):

  1. a vault is registered (else 409, "not registered");
  2. nothing outside the job table is using it (a sync: `VaultRegistry.in_use`), 409;
  3. no job that uses the vault is queued or running (`vault_job`): an online backup, a
     restore from the cloud, a verify of the cloud tier or a cloud GC; 409 naming the job
     (Stop-Job it, or wait). Prune, disk verify and disk GC do not touch the vault;
  4. the security PIN is used (403 when refused);
  5. the registration file goes (the stored passphrase and storage credentials with it),
     after a secret-free record of the vault id and header generation (server/vault_state.py);
  6. the listeners are told: the connection monitor reports ``not_registered`` at once, so
     the policy refuses every cloud operation with "no vault registered";
  7. the online runner forgets the vault it had open (its keys leave memory).

Kept: the vault's objects (nothing is deleted in the cloud), the location cache under
``<data_dir>/vault`` (keyed by vault id; a later registration of the same vault reuses it)
and the catalog's online-RP rows. Those rows stay because the vault still holds the copies:
the disk-retention rule keeps relying on them, and a re-registration of the same vault
finds them again (its sync re-checks every one). While no vault is registered the listings
show them with ``"vault_registered": false`` and the vault id they are in; restoring one
needs Register-Vault first.

A job queued after step 3 by a race (an online backup started in the same instant) fails
when it runs with "no vault is registered", not retryable: the policy refuses it anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import structlog

from server.catalog_errors import ConflictError
from server.catalog_rows import JobKind, JobRow, JobState
from server.context import ServerContext
from server.protection import require_pin
from server.vault_backends import describe, public_location
from server.vault_registry import VaultRegistry
from server.vault_state import Registration

__all__ = ["PIN_PURPOSE", "Unregistered", "VaultBusyError", "unregister_vault", "vault_job"]

log = structlog.get_logger()

PIN_PURPOSE: Final = "unregister-vault"
_ACTIVE: Final = (JobState.QUEUED, JobState.RUNNING)
_SCAN_LIMIT: Final = 10_000


class VaultBusyError(ConflictError):
    """A job that uses the vault is queued or running (409)."""

    def __init__(self, job: JobRow, what: str) -> None:
        super().__init__(
            "job",
            job.id,
            f"{what} job {job.id} is {job.state.value} and uses the vault: wait for it or"
            f" stop it (Stop-Job -Id {job.id}), then run Unregister-Vault again",
        )
        self.job = job


def vault_job(job: JobRow) -> str | None:
    """What `job` does with the vault ("online backup"...), or None if it never touches it."""
    if job.kind is JobKind.ONLINE_BACKUP:
        return "online backup"
    if job.kind is JobKind.RESTORE and job.params.get("from_cloud") is True:
        return "restore from cloud"
    if job.kind is JobKind.VERIFY and job.params.get("tier") == "cloud":
        return "cloud verify"
    if job.kind is JobKind.GC and job.params.get("tier") == "cloud":
        return "cloud garbage collection"
    return None


@dataclass(frozen=True, slots=True)
class Unregistered:
    registration: Registration
    unregistered_at: float
    online_recovery_points: int  # catalog rows kept (live ones)

    def to_json(self) -> dict[str, Any]:
        reg = self.registration
        return {
            "vault_id": reg.vault_id,
            "location": public_location(reg.backend),
            "description": describe(reg.backend),
            "unregistered_at": self.unregistered_at,
            "online_recovery_points": self.online_recovery_points,
            "vault_data": "kept",
        }


async def _refuse_if_busy(ctx: ServerContext) -> None:
    for state in _ACTIVE:
        for job in await ctx.catalog.list_jobs(state=state, limit=_SCAN_LIMIT):
            what = vault_job(job)
            if what is not None:
                raise VaultBusyError(job, what)


async def unregister_vault(
    ctx: ServerContext, registry: VaultRegistry, pin: str | None
) -> Unregistered:
    """Steps 1-7 of the module docstring. NotRegisteredError, VaultInUseError,
    VaultBusyError or SecurityPinError when refused (nothing changed then)."""

    async def check(reg: Registration) -> None:
        await _refuse_if_busy(ctx)
        await require_pin(
            ctx.catalog, pin, PIN_PURPOSE, f"unregistering from vault {reg.vault_id} needs it"
        )

    reg = await registry.unregister(check)
    former = await registry.former()
    if ctx.online is not None:
        await ctx.online.forget_vault()
    if ctx.cloud is not None:
        await ctx.cloud.settle()  # the not_registered change saved, alerted and announced
    kept = len(await ctx.catalog.list_online_rps())
    log.info("vault_unregister_done", vault_id=reg.vault_id, online_rps_kept=kept)
    return Unregistered(reg, former.unregistered_at if former else ctx.clock(), kept)
