"""The operators' REST API (routes specified in server/api/__init__.py) and registration."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import structlog
from aiohttp import web

from agent import protocol as p
from server import __version__
from server.alerts import alert_json
from server.capacity import pool_capacity
from server.catalog import JobState
from server.catalog_errors import CatalogError
from server.cloud_restore import disk_copy_gone
from server.context import CTX_KEY, ServerContext
from server.http_json import error_response, read_object
from server.operator_cloud import cloud_recovery_points, restore_from_cloud
from server.operator_cloud import routes as cloud_routes
from server.operator_connection import routes as connection_routes
from server.operator_groups import deletion_options
from server.operator_groups import routes as group_routes
from server.operator_online import TIERS, start_online_backup
from server.operator_vault import routes as vault_routes
from server.operator_verify import routes as verify_routes
from server.protection import backup_group, drop_from_pool, require_pin
from storage_pool import EntryType
from storage_pool.errors import RecoveryPointNotFoundError

log = structlog.get_logger()


def _ctx(request: web.Request) -> ServerContext:
    return request.app[CTX_KEY]


def bad(message: str) -> web.Response:
    return error_response(400, message)


def _str_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a list of strings")
    return value


# --------------------------------------------------------------------------- serializers


def agent_json(a: Any) -> dict[str, Any]:
    return {
        "id": a.id,
        "name": a.name,
        "hostname": a.hostname,
        "online": a.online,
        "last_seen_at": a.last_seen_at,
        "last_backup_at": a.last_backup_at,
        "version": a.version,
        "created_at": a.created_at,
        "needs_registration": a.needs_registration,
    }


def data_source_json(d: Any, rps: list[Any] | None = None) -> dict[str, Any]:
    rps = rps or []
    return {
        "id": d.id,
        "agent_id": d.agent_id,
        "agent_name": d.agent_name,
        "name": d.name,
        "kind": d.kind,
        "paths": list(d.paths),
        "excludes": list(d.excludes),
        "created_at": d.created_at,
        "rp_count": len(rps),
        "last_rp_at": max((r.created_at for r in rps), default=None),
    }


def job_json(j: Any) -> dict[str, Any]:
    return {
        "id": j.id,
        "kind": str(j.kind),
        "state": str(j.state),
        "agent_id": j.agent_id,
        "data_source_id": j.data_source_id,
        "params": dict(j.params),
        "progress": dict(j.progress),
        "result": dict(j.result) if j.result is not None else None,
        "error": j.error,
        "retryable": j.retryable,
        "warnings": j.warnings,
        "created_at": j.created_at,
        "started_at": j.started_at,
        "ended_at": j.ended_at,
    }


def rp_json(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "data_source_id": r.data_source_id,
        "data_source_name": r.labels.get("data_source_name"),
        "agent_id": r.agent_id,
        "agent_name": r.labels.get("agent_name"),
        "created_at": r.created_at,
        "entries": r.entries,
        "files": r.files,
        "logical_bytes": r.logical_bytes,
        "warnings": int(r.labels.get("warnings", "0") or 0),
        "tier": "disk",
    }


# --------------------------------------------------------------------------- handlers


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


async def new_agent_token(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    body = await read_object(request, empty_ok=True)
    ttl = body.get("ttl_minutes", ctx.config.agents.token_ttl_minutes)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= 10080:
        return bad("ttl_minutes must be an integer from 1 to 10080")
    token, expires = await ctx.catalog.create_agent_token(ttl * 60.0)
    log.info("agent_token_created", expires_at=expires)
    return web.json_response({"token": token, "expires_at": expires, "server_url": ctx.server_url})


async def register(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    body = await read_object(request, empty_ok=True)
    token = body.get("token")
    hostname = body.get("hostname") or ""
    name = body.get("name") or hostname
    version = body.get("version") or ""
    if not all(isinstance(v, str) for v in (token, hostname, name, version)) or not token:
        return bad("register needs string fields token, hostname (name and version optional)")
    try:
        agent, secret, command_key = await ctx.catalog.register_agent(
            token, name=name, hostname=hostname, version=version
        )
    except CatalogError as err:
        log.warning("agent_registration_refused", reason=str(err), peer=request.remote)
        status = 403 if err.__class__.__name__ == "TokenError" else 409
        return web.json_response({"error": str(err)}, status=status)
    if ctx.register_identity is not None:
        await ctx.register_identity(agent.id, secret)
    log.info("agent_registered", agent_id=agent.id, name=agent.name, hostname=hostname)
    return web.json_response(
        {
            "agent_id": agent.id,
            "name": agent.name,
            "credential": secret,
            "mqtt_password": ctx.mqtt_password(agent.id) if ctx.mqtt_password else secret,
            "command_key": command_key,
            "ca_pem": ctx.ca_pem.decode(),
            "server_url": ctx.server_url,
            "mqtt_url": ctx.mqtt_url,
        }
    )


async def list_agents(request: web.Request) -> web.Response:
    agents = await _ctx(request).catalog.list_agents()
    return web.json_response([agent_json(a) for a in agents])


async def remove_agent(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    agent = await ctx.catalog.get_agent(request.match_info["ref"])
    delete_data, pin = await deletion_options(request, "an agent removal")
    if delete_data:
        await require_pin(
            ctx.catalog,
            pin,
            f"Remove-Agent -DeleteData {agent.name}",
            f"deleting the recovery points of agent {agent.name}",
        )
    # Catalog first: a crash after it leaves pool RPs that the next start's rebuild
    # would bring back as orphans, never catalog rows pointing at deleted data.
    await drop_from_pool(
        ctx.pool, await ctx.catalog.remove_agent(agent.id, delete_data=delete_data)
    )
    if ctx.remove_identity is not None:
        await ctx.remove_identity(agent.id)
    log.info("agent_removed", agent_id=agent.id, delete_data=delete_data)
    return web.json_response({"removed": agent.id})


async def list_data_sources(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    agent_ref = request.query.get("agent")
    agent_id = (await ctx.catalog.get_agent(agent_ref)).id if agent_ref else None
    by_source: dict[str, list[Any]] = {}
    for rp in await ctx.catalog.list_recovery_points(agent_id=agent_id):  # one query, not N
        by_source.setdefault(rp.data_source_id, []).append(rp)
    sources = await ctx.catalog.list_data_sources(agent_id=agent_id)
    return web.json_response([data_source_json(d, by_source.get(d.id)) for d in sources])


async def add_data_source(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    body = await read_object(request, empty_ok=True)
    agent_ref = body.get("agent")
    if not isinstance(agent_ref, str):
        return bad("field 'agent' (agent name or id) is required")
    try:
        paths = _str_list(body.get("paths"), "paths")
        excludes = _str_list(body.get("excludes"), "excludes")
    except ValueError as err:
        return bad(str(err))
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        return bad("field 'name' must be a string")
    agent = await ctx.catalog.get_agent(agent_ref)
    ds = await ctx.catalog.add_data_source(agent.id, name, paths, excludes)
    log.info("data_source_added", data_source=ds.id, agent_id=agent.id, paths=paths)
    return web.json_response(data_source_json(ds), status=201)


async def remove_data_source(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    ds = await ctx.catalog.get_data_source(request.match_info["ref"])
    delete_data, pin = await deletion_options(request, "a data source removal")
    if delete_data:
        await require_pin(
            ctx.catalog,
            pin,
            f"Remove-DataSource -DeleteData {ds.ref}",
            f"deleting the recovery points of data source {ds.ref}",
        )
    await drop_from_pool(
        ctx.pool, await ctx.catalog.remove_data_source(ds.id, delete_data=delete_data)
    )
    return web.json_response({"removed": ds.id})


async def start_backup(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    body = await read_object(request, empty_ok=True)
    online = body.get("online", False)
    if not isinstance(online, bool):
        return bad("field 'online' must be true or false")
    if online:
        return await start_online_backup(ctx, body, job_json)
    ref = body.get("data_source")
    group_ref = body.get("protection_group")
    if group_ref is not None:
        if ref is not None or not isinstance(group_ref, str):
            return bad("give either 'data_source' or 'protection_group' (a group name or id)")
        return await _start_group_backup(ctx, group_ref)
    if not isinstance(ref, str):
        return bad("field 'data_source' (id or agent:name) is required")
    ds = await ctx.catalog.get_data_source(ref)
    job = await ctx.job_manager().start_backup(ds.id)
    return web.json_response(job_json(job), status=201)


async def _start_group_backup(ctx: ServerContext, group_ref: str) -> web.Response:
    done = await backup_group(ctx.catalog, ctx.job_manager(), group_ref)
    return web.json_response(
        {
            "protection_group": {"id": done.group.id, "name": done.group.name},
            "jobs": [job_json(j) for j in done.jobs],
            "skipped": [
                {"data_source_id": ds.id, "data_source": ds.ref, "reason": reason}
                for ds, reason in done.skipped
            ],
        },
        status=201,
    )


async def start_restore(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    body = await read_object(request, empty_ok=True)
    rp_id = body.get("rp_id")
    if not isinstance(rp_id, str):
        return bad("field 'rp_id' is required")
    conflict = body.get("conflict", "rename")
    if conflict not in p.CONFLICT_MODES:
        return bad(f"conflict must be one of {', '.join(sorted(p.CONFLICT_MODES))}")
    try:
        items = _str_list(body.get("items"), "items")
    except ValueError as err:
        return bad(str(err))
    target_path = body.get("target_path") or ""
    if not isinstance(target_path, str) or (target_path and not target_path.startswith("/")):
        return bad("target_path must be an absolute path (or empty for the original location)")
    from_cloud = body.get("from_cloud", False)
    if not isinstance(from_cloud, bool):
        return bad("from_cloud must be true or false")
    if from_cloud or await disk_copy_gone(ctx.catalog, ctx.pool, rp_id):
        if not from_cloud:
            log.info("restore_from_cloud_disk_copy_gone", rp_id=rp_id)
        job = await restore_from_cloud(
            ctx,
            rp_id,
            items=items,
            target_path=target_path,
            conflict=conflict,
            target_agent=body.get("target_agent"),
        )
        return web.json_response(job_json(job), status=201)
    rp = await ctx.catalog.get_recovery_point(rp_id)
    try:
        pool_rp = await ctx.pool.get_recovery_point(rp.id)
    except RecoveryPointNotFoundError:
        return web.json_response(
            {"error": f"recovery point {rp_id} is in the catalog but not in the pool"}, status=409
        )
    for item in items:
        try:
            await ctx.pool.find_entry(pool_rp, os.fsencode(item.strip("/")))
        except KeyError:
            return web.json_response(
                {"error": f"item {item!r} is not in recovery point {rp_id}"}, status=404
            )
    target_ref = body.get("target_agent")
    target = await ctx.catalog.get_agent(target_ref if isinstance(target_ref, str) else rp.agent_id)
    params = {
        "rp_id": rp.id,
        "data_source_id": rp.data_source_id,
        "source_agent_id": rp.agent_id,
        "items": items,
        "target_path": target_path,
        "conflict": conflict,
    }
    job = await ctx.job_manager().start_restore(target.id, params)
    return web.json_response(job_json(job), status=201)


async def list_jobs(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    q = request.query
    try:
        limit = int(q.get("limit", "100"))
    except ValueError:
        return bad("limit must be an integer")
    state_text = q.get("state") or None
    if state_text is not None and state_text not in p.JOB_STATES:
        return bad(f"state must be one of {', '.join(p.JOB_STATES)}")
    state = JobState(state_text) if state_text else None
    agent_id = (await ctx.catalog.get_agent(q["agent"])).id if q.get("agent") else None
    ds_ref = q.get("data_source")
    ds_id = (await ctx.catalog.get_data_source(ds_ref)).id if ds_ref else None
    jobs = await ctx.catalog.list_jobs(
        state=state, agent_id=agent_id, data_source_id=ds_id, limit=limit
    )
    return web.json_response([job_json(j) for j in jobs])


async def get_job(request: web.Request) -> web.Response:
    job = await _ctx(request).catalog.get_job(request.match_info["id"])
    return web.json_response(job_json(job))


async def cancel_job(request: web.Request) -> web.Response:
    job = await _ctx(request).job_manager().cancel(request.match_info["id"])
    return web.json_response(job_json(job))


async def list_recovery_points(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    q = request.query
    ds_ref = q.get("data_source")
    ds_id = (await ctx.catalog.get_data_source(ds_ref)).id if ds_ref else None
    agent_id = (await ctx.catalog.get_agent(q["agent"])).id if q.get("agent") else None
    tier = (q.get("tier") or "disk").lower()
    if tier not in TIERS:
        return bad(f"tier must be one of {', '.join(TIERS)}")
    out: list[dict[str, Any]] = []
    if tier in ("disk", "all"):
        rps = await ctx.catalog.list_recovery_points(data_source_id=ds_id, agent_id=agent_id)
        out.extend(rp_json(r) for r in rps)
    # The online RPs (and the checks of source=/deleted=) live in server/operator_cloud.py.
    out.extend(
        await cloud_recovery_points(ctx, q, tier=tier, data_source_id=ds_id, agent_id=agent_id)
    )
    return web.json_response(out)


async def list_items(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    rp = await ctx.catalog.get_recovery_point(request.match_info["id"])
    pool_rp = await ctx.pool.get_recovery_point(rp.id)
    parent = os.fsencode(request.query.get("path", "").strip("/"))
    depth = parent.count(b"/") + 1 if parent else 0
    out: list[dict[str, Any]] = []
    prefix = parent + b"/" if parent else b""
    found_parent = not parent
    async for e in ctx.pool.iter_entries(pool_rp):
        if e.path == parent:
            found_parent = True
            if e.type is not EntryType.DIR:
                out.append(_item(e))
        if e.path.startswith(prefix) and e.path.count(b"/") == depth:
            out.append(_item(e))
    if not found_parent:
        return web.json_response(
            {"error": f"path {request.query.get('path')!r} is not in recovery point {rp.id}"},
            status=404,
        )
    return web.json_response(out)


def _item(e: Any) -> dict[str, Any]:
    return {
        # Files data sources store absolute paths without their leading "/".
        "path": "/" + os.fsdecode(e.path),
        "type": {
            "f": "file",
            "d": "directory",
            "l": "symlink",
        }.get(e.type.value, e.type.name.lower()),
        "size": e.size,
        "mode": e.mode,
        "mtime": e.mtime_ns / 1e9,
    }


async def storage_pool(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    stats = await ctx.pool.stats()
    capacity = await pool_capacity(ctx.pool.root, ctx.config.pool)
    scratch = ctx.config.scratch_path
    used = await ctx.pool.run(_du, scratch)
    return web.json_response(
        {
            "path": str(ctx.pool.root),
            "recovery_points": stats.recovery_points,
            "logical_bytes": stats.logical_bytes,
            "stored_bytes": stats.stored_bytes,
            "chunk_count": stats.chunk_count,
            "dedup_ratio": round(stats.dedup_ratio, 3),
            "fs_total_bytes": stats.fs_total_bytes,
            "fs_free_bytes": stats.fs_free_bytes,
            "fs_used_percent": round(capacity.used_percent, 1),
            "reserve_bytes": capacity.reserve_bytes,
            "below_reserve": capacity.below_reserve,
            "scratch_path": str(scratch),
            "scratch_used_bytes": used,
        }
    )


async def list_alerts(request: web.Request) -> web.Response:
    include_resolved = request.query.get("all") in ("1", "true", "yes")
    alerts = await _ctx(request).catalog.list_alerts(include_resolved=include_resolved)
    return web.json_response([alert_json(a) for a in alerts])


def _du(path: os.PathLike[str]) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                continue
    return total


def routes() -> Iterable[web.RouteDef]:
    b = "/api/v1"
    return [
        web.get(f"{b}/health", health),
        web.post(f"{b}/agent-tokens", new_agent_token),
        web.post(f"{b}/register", register),
        web.get(f"{b}/agents", list_agents),
        web.delete(f"{b}/agents/{{ref}}", remove_agent),
        web.get(f"{b}/data-sources", list_data_sources),
        web.post(f"{b}/data-sources", add_data_source),
        web.delete(f"{b}/data-sources/{{ref}}", remove_data_source),
        web.post(f"{b}/jobs/backup", start_backup),
        web.post(f"{b}/jobs/restore", start_restore),
        web.get(f"{b}/jobs", list_jobs),
        web.get(f"{b}/jobs/{{id}}", get_job),
        web.post(f"{b}/jobs/{{id}}/cancel", cancel_job),
        web.get(f"{b}/recovery-points", list_recovery_points),
        web.get(f"{b}/recovery-points/{{id}}/items", list_items),
        web.get(f"{b}/storage-pool", storage_pool),
        *group_routes(),
        *vault_routes(),
        *cloud_routes(),
        *connection_routes(),
        *verify_routes(),
        web.get(f"{b}/alerts", list_alerts),
    ]
