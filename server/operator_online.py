"""REST side of online backups (spec in server/api/__init__.py).

``POST /jobs/backup`` with ``"online": true`` (and ``data_source`` or
``protection_group``) queues online backup jobs; server/operator_api.py hands such bodies
here. ``GET /recovery-points?tier=disk|cloud|all`` lists disk RPs, online RPs or both
(online RPs: server/operator_cloud.py); `TIERS` are the tiers it takes.
Refusals (no vault registered, no disk RP, an online backup already active) are 409 with
the reason, through the app's error middleware.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from server.context import ServerContext
from server.http_json import error_response

__all__ = ["TIERS", "online_stats", "start_online_backup"]

TIERS: Final = ("disk", "cloud", "all")


async def online_stats(ctx: ServerContext) -> dict[str, Any]:
    """Get-Vault's online figures from the catalog rows."""
    rows = await ctx.catalog.list_online_rps()
    return {
        "online_recovery_points": len(rows),
        "online_data_sources": len({r.data_source_id for r in rows}),
        "online_logical_bytes": sum(r.logical_bytes for r in rows),
    }


def _runner_of(ctx: ServerContext) -> Any:
    if ctx.online is None:
        raise web.HTTPServiceUnavailable(text="online backups are not running on this server")
    return ctx.online


async def start_online_backup(
    ctx: ServerContext, body: dict[str, Any], job_json: Callable[[Any], dict[str, Any]]
) -> web.Response:
    """`job_json` is operator_api's job serializer (passed in: that module imports this)."""
    ref = body.get("data_source")
    group_ref = body.get("protection_group")
    runner = _runner_of(ctx)
    if group_ref is not None:
        if ref is not None or not isinstance(group_ref, str):
            return error_response(
                400, "give either 'data_source' or 'protection_group' (a group name or id)"
            )
        group = await ctx.catalog.get_group(group_ref)
        done = await runner.start_group(group.id)
        return web.json_response(
            {
                "protection_group": {"id": group.id, "name": group.name},
                "jobs": [job_json(j) for j in done.jobs],
                "skipped": [
                    {"data_source_id": ds.id, "data_source": ds.ref, "reason": reason}
                    for ds, reason in done.skipped
                ],
            },
            status=201,
        )
    if not isinstance(ref, str):
        return error_response(400, "field 'data_source' (id or agent:name) is required")
    job = await runner.start(ref)
    return web.json_response(job_json(job), status=201)
