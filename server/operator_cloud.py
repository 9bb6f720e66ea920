"""REST handlers of the cloud tier's read side (spec in server/api/__init__.py): the sync of
the catalog from the vault, the one listing of online RPs, and restores from the cloud.

    POST /api/v1/vault/sync              fill the catalog from the vault (server/vault_sync.py)
    GET  /api/v1/recovery-points?tier=cloud|all
                                         the online RPs (server/operator_api.py calls
                                         `cloud_recovery_points`, the only code path)
    POST /api/v1/jobs/restore            with "from_cloud": true, or for an RP whose disk
                                         copy is gone: `restore_from_cloud`

The listing answers from the catalog: what this server recorded of its vault (rows added by
its online backups and by syncs). ``source=vault`` first syncs the catalog from the vault
(reads and checks every manifest against the vault's head catalog), then answers the same
way: the alternate-server case, where the catalog knows nothing yet, and the way to see
what another server wrote to a shared vault. ``deleted=1`` adds soft-deleted rows. While no
vault is registered (after Unregister-Vault) the rows stay listed with
``"vault_registered": false``: the copies are still in that vault, and restoring one needs
Register-Vault first. (``GET /vault/recovery-points``, an older second listing with its own
shape, is gone: the CLI and the tests use this one.)

Status codes follow server/operator_vault.py: no vault registered 409, wrong passphrase
403, a rolled-back or tampered vault catalog 422, storage failures 502.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Final

import structlog
from aiohttp import web

from server.catalog_online import OnlineRecoveryPointRow
from server.cloud_restore import start_cloud_restore
from server.context import CTX_KEY, ServerContext
from server.http_json import http_error
from server.ids import AgentId, DataSourceId
from server.operator_vault import registry_for
from server.vault_registry import NotRegisteredError, VaultRegistry
from server.vault_sync import SyncReport, sync_registered
from storage_pool.vault.backend import VaultBackendError
from storage_pool.vault.format_errors import (
    RollbackError,
    TamperedObjectError,
    VaultFormatError,
    WrongPassphraseError,
)

__all__ = [
    "SOURCES",
    "cloud_recovery_points",
    "online_rp_json",
    "restore_from_cloud",
    "routes",
    "sync_at_start",
]

log = structlog.get_logger()

SOURCES: Final = ("catalog", "vault")
_TRUE: Final = frozenset({"1", "true", "yes"})


def _ctx(request: web.Request) -> ServerContext:
    return request.app[CTX_KEY]


def online_rp_json(
    r: OnlineRecoveryPointRow,
    owners: Mapping[DataSourceId, tuple[str | None, str | None, str | None]],
    vault_id: str | None,
    registered: bool,
) -> dict[str, Any]:
    """An online RP's document. `owners`: data source -> (agent id, agent name, data
    source name). ``created_at`` is the disk RP's (what the copy is of, as for disk RPs);
    ``copied_at`` when the copy was made."""
    agent_id, agent_name, ds_name = owners.get(r.data_source_id, (None, None, None))
    return {
        "id": r.id,
        "data_source_id": r.data_source_id,
        "data_source_name": ds_name,
        "agent_id": agent_id,
        "agent_name": agent_name,
        "created_at": r.source_created_at,
        "copied_at": r.created_at,
        "disk_rp_id": r.disk_rp_id,
        "entries": None,
        "files": None,
        "logical_bytes": r.logical_bytes,
        "warnings": 0,
        "sequence": r.sequence,
        "job_id": r.job_id,
        "deleted_at": r.deleted_at,
        "tier": "cloud",
        "vault_id": vault_id,
        "vault_registered": registered,
    }


@contextlib.contextmanager
def _sync_errors() -> Iterator[None]:
    try:
        yield
    except NotRegisteredError as err:
        raise http_error(web.HTTPConflict, str(err)) from err
    except WrongPassphraseError as err:
        raise http_error(web.HTTPForbidden, str(err)) from err
    except (RollbackError, TamperedObjectError, VaultFormatError) as err:
        log.error("vault_sync_refused", error=str(err))
        raise http_error(web.HTTPUnprocessableEntity, str(err)) from err
    except VaultBackendError as err:
        raise http_error(web.HTTPBadGateway, f"vault storage: {err}") from err


async def _sync(registry: VaultRegistry, ctx: ServerContext) -> SyncReport:
    """Sync the catalog from the registered vault (it holds `in_use`: Unregister-Vault
    refuses while it runs)."""
    with registry.in_use("vault sync"):
        # Reading the vault into the catalog is a restore from cloud for the policy.
        return await sync_registered(registry, ctx.catalog, gate=ctx.cloud_gate)


async def cloud_recovery_points(
    ctx: ServerContext,
    query: Mapping[str, str],
    *,
    tier: str,
    data_source_id: DataSourceId | None,
    agent_id: AgentId | None,
) -> list[dict[str, Any]]:
    """The online RPs of ``GET /recovery-points`` (module docstring): [] for tier disk,
    after checking that the cloud-only options were not given with it."""
    source = (query.get("source") or "catalog").lower()
    if source not in SOURCES:
        raise http_error(web.HTTPBadRequest, f"source must be one of {', '.join(SOURCES)}")
    deleted = (query.get("deleted") or "").lower() in _TRUE
    if tier == "disk":
        if source == "vault" or deleted:
            raise http_error(
                web.HTTPBadRequest,
                "source=vault and deleted=1 list online recovery points: add tier=cloud",
            )
        return []
    registry = registry_for(ctx)
    if source == "vault":
        with _sync_errors():
            await _sync(registry, ctx)
    reg = await registry.registration()
    if reg is not None:
        vault_id: str | None = reg.vault_id
    else:
        former = await registry.former()
        vault_id = former.vault_id if former is not None else None
    rows = await ctx.catalog.list_online_rps(data_source_id, include_deleted=deleted)
    sources = await ctx.catalog.list_data_sources(include_removed=True)
    owners = {d.id: (d.agent_id, d.agent_name, d.name) for d in sources}
    out = [online_rp_json(r, owners, vault_id, reg is not None) for r in rows]
    if agent_id is not None:
        out = [doc for doc in out if doc["agent_id"] == agent_id]
    return out


async def sync_at_start(ctx: ServerContext) -> SyncReport | None:
    """At server start: sync if a vault is registered. Never raises (a vault that cannot
    be read now must not stop the server); the reason is logged."""
    registry = registry_for(ctx)
    try:
        if await registry.registration() is None:
            return None
        return await _sync(registry, ctx)
    except Exception as err:
        log.error("vault_sync_failed", when="start", error=f"{type(err).__name__}: {err}")
        return None


async def vault_sync(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    with _sync_errors():
        report = await _sync(registry_for(ctx), ctx)
    return web.json_response(report.to_json())


async def restore_from_cloud(
    ctx: ServerContext,
    ref: str,
    *,
    items: list[str],
    target_path: str,
    conflict: str,
    target_agent: Any,
) -> Any:
    """The held restore job of POST /jobs/restore for a restore from the cloud."""
    if target_agent is not None and not isinstance(target_agent, str):
        raise http_error(web.HTTPBadRequest, "field 'target_agent' must be a string")
    registry = registry_for(ctx)
    if await registry.registration() is None:
        raise http_error(web.HTTPConflict, str(NotRegisteredError()))
    return await start_cloud_restore(
        ctx,
        registry,
        ref,
        items=items,
        target_path=target_path,
        conflict=conflict,
        target_agent=target_agent,
    )


def routes() -> list[web.RouteDef]:
    b = "/api/v1"
    return [
        web.post(f"{b}/vault/sync", vault_sync),
    ]
