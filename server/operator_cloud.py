"""REST handlers of the cloud tier's read side (spec in server/api/__init__.py): the sync of
the catalog from the vault, the online-RP listing, and restores from the cloud.

    POST /api/v1/vault/sync              fill the catalog from the vault (server/vault_sync.py)
    GET  /api/v1/vault/recovery-points   the online RPs the catalog knows (?data_source=,
                                         ?all=1 for deleted ones too)
    POST /api/v1/jobs/restore            with "from_cloud": true, or for an RP whose disk
                                         copy is gone: `restore_from_cloud`

Status codes follow server/operator_vault.py: no vault registered 409, wrong passphrase
403, a rolled-back or tampered vault catalog 422, storage failures 502.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from server.cloud_restore import start_cloud_restore
from server.context import CTX_KEY, ServerContext
from server.http_json import http_error
from server.operator_vault import registry_for
from server.vault_registry import NotRegisteredError
from server.vault_sync import SyncReport, sync_registered
from storage_pool.vault.backend import VaultBackendError
from storage_pool.vault.format_errors import (
    RollbackError,
    TamperedObjectError,
    VaultFormatError,
    WrongPassphraseError,
)

__all__ = ["online_rp_json", "restore_from_cloud", "routes", "sync_at_start"]

log = structlog.get_logger()


def _ctx(request: web.Request) -> ServerContext:
    return request.app[CTX_KEY]


def online_rp_json(r: Any, labels: dict[str, str | None] | None = None) -> dict[str, Any]:
    return {
        "id": r.id,
        "data_source_id": r.data_source_id,
        "disk_rp_id": r.disk_rp_id,
        "source_created_at": r.source_created_at,
        "created_at": r.created_at,
        "logical_bytes": r.logical_bytes,
        "sequence": r.sequence,
        "deleted_at": r.deleted_at,
        "tier": "cloud",
        **(labels or {}),
    }


async def sync_at_start(ctx: ServerContext) -> SyncReport | None:
    """At server start: sync if a vault is registered. Never raises (a vault that cannot
    be read now must not stop the server); the reason is logged."""
    registry = registry_for(ctx)
    try:
        if await registry.registration() is None:
            return None
        return await sync_registered(registry, ctx.catalog)
    except Exception as err:
        log.error("vault_sync_failed", when="start", error=f"{type(err).__name__}: {err}")
        return None


async def vault_sync(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    try:
        report = await sync_registered(registry_for(ctx), ctx.catalog)
    except NotRegisteredError as err:
        raise http_error(web.HTTPConflict, str(err)) from err
    except WrongPassphraseError as err:
        raise http_error(web.HTTPForbidden, str(err)) from err
    except (RollbackError, TamperedObjectError, VaultFormatError) as err:
        log.error("vault_sync_refused", error=str(err))
        raise http_error(web.HTTPUnprocessableEntity, str(err)) from err
    except VaultBackendError as err:
        raise http_error(web.HTTPBadGateway, f"vault storage: {err}") from err
    return web.json_response(report.to_json())


async def list_online_rps(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    q = request.query
    ds_ref = q.get("data_source")
    ds_id = (await ctx.catalog.get_data_source(ds_ref)).id if ds_ref else None
    include_deleted = q.get("all") in ("1", "true", "yes")
    rows = await ctx.catalog.list_online_rps(ds_id, include_deleted=include_deleted)
    sources = {d.id: d for d in await ctx.catalog.list_data_sources()}
    out = []
    for r in rows:
        ds = sources.get(r.data_source_id)
        labels: dict[str, str | None] = {
            "data_source_name": ds.name if ds else None,
            "agent_id": ds.agent_id if ds else None,
            "agent_name": ds.agent_name if ds else None,
        }
        out.append(online_rp_json(r, labels))
    return web.json_response(out)


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
        web.get(f"{b}/vault/recovery-points", list_online_rps),
    ]
