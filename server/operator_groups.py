"""REST handlers of protection groups and security PINs (spec in server/api/__init__.py).

Bad input (an unknown field, an invalid policy value, an unknown data source) is 400 with
the reason, a name that is taken or a data source already in another group is 409, a
refused security PIN is 403; in every one of these cases nothing has changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from aiohttp import web

from server.catalog import DataSourceRow, ProtectionGroupRow, RecoveryPointRow
from server.catalog_errors import CatalogValidationError
from server.context import CTX_KEY, ServerContext
from server.http_json import read_object
from server.policy import DiskPolicy, OnlinePolicy, disk_policy_from, online_policy_from
from server.protection import GroupChange, remove_group, resolve_members, update_group

__all__ = ["deletion_options", "group_json", "routes"]

_CREATE_FIELDS: Final = frozenset({"name", "disk", "online", "members"})
_PATCH_FIELDS: Final = frozenset({"name", "disk", "online", "add", "remove", "security_pin"})
_TRUE: Final = frozenset({"1", "true", "yes"})


def _ctx(request: web.Request) -> ServerContext:
    return request.app[CTX_KEY]


def _check_fields(body: Mapping[str, Any], known: Iterable[str], what: str) -> None:
    extra = sorted(set(body) - set(known))
    if extra:
        raise CatalogValidationError(
            f"unknown field(s) {', '.join(extra)} in {what}: known are {', '.join(sorted(known))}"
        )


def _object(body: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = body.get(key)
    if value is not None and not isinstance(value, dict):
        raise CatalogValidationError(f"field {key!r} must be a JSON object of policy fields")
    return value


def _refs(body: Mapping[str, Any], key: str) -> list[str]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise CatalogValidationError(
            f"field {key!r} must be a list of data source references (agent:name or id)"
        )
    return value


def _optional_text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise CatalogValidationError(f"field {key!r} must be a string")
    return value


def group_json(
    group: ProtectionGroupRow,
    sources: Mapping[str, DataSourceRow],
    rps: Mapping[str, Sequence[RecoveryPointRow]],
) -> dict[str, Any]:
    members = []
    for ds_id in group.members:
        ds = sources.get(ds_id)
        mine = rps.get(ds_id, ())
        members.append(
            {
                "id": ds_id,
                "ref": ds.ref if ds else None,
                "agent_name": ds.agent_name if ds else None,
                "name": ds.name if ds else None,
                "rp_count": len(mine),
                "last_rp_at": max((r.created_at for r in mine), default=None),
            }
        )
    return {
        "id": group.id,
        "name": group.name,
        "members": members,
        "disk": group.disk.to_json(),
        "online": group.online.to_json(),
        "created_at": group.created_at,
        "updated_at": group.updated_at,
        "removed_at": group.removed_at,
    }


async def _render(ctx: ServerContext, groups: Sequence[ProtectionGroupRow]) -> list[dict[str, Any]]:
    # Two queries whatever the number of groups: every data source, every RP.
    sources: dict[str, DataSourceRow] = {
        d.id: d for d in await ctx.catalog.list_data_sources(include_removed=True)
    }
    by_source: dict[str, list[RecoveryPointRow]] = {}
    for rp in await ctx.catalog.list_recovery_points():
        by_source.setdefault(rp.data_source_id, []).append(rp)
    return [group_json(g, sources, by_source) for g in groups]


async def list_groups(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    include_removed = request.query.get("include_removed", "").lower() in _TRUE
    groups = await ctx.catalog.list_groups(include_removed=include_removed)
    return web.json_response(await _render(ctx, groups))


async def get_group(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    group = await ctx.catalog.get_group(request.match_info["ref"])
    return web.json_response((await _render(ctx, [group]))[0])


async def create_group(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    body = await read_object(request)
    _check_fields(body, _CREATE_FIELDS, "a new protection group")
    name = _optional_text(body, "name")
    if not name:
        raise CatalogValidationError("field 'name' (the protection group's name) is required")
    disk_given = _object(body, "disk")
    online_given = _object(body, "online")
    disk = disk_policy_from(disk_given) if disk_given is not None else DiskPolicy()
    online = online_policy_from(online_given) if online_given is not None else OnlinePolicy()
    members = await resolve_members(ctx.catalog, _refs(body, "members"))
    group = await ctx.catalog.create_group(name, disk, online, members)
    return web.json_response((await _render(ctx, [group]))[0], status=201)


async def patch_group(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    body = await read_object(request)
    _check_fields(body, _PATCH_FIELDS, "a protection group change")
    change = GroupChange(
        name=_optional_text(body, "name"),
        disk=_object(body, "disk"),
        online=_object(body, "online"),
        add=_refs(body, "add"),
        remove=_refs(body, "remove"),
    )
    pin = _optional_text(body, "security_pin")
    group = await update_group(ctx.catalog, request.match_info["ref"], change, pin, ctx.clock())
    return web.json_response((await _render(ctx, [group]))[0])


async def deletion_options(request: web.Request, what: str) -> tuple[bool, str | None]:
    """``delete_data`` and ``security_pin`` of a DELETE, from its JSON body or its query.
    The CLI sends the PIN in the body, which keeps it out of access logs."""
    body = await read_object(request, empty_ok=True)
    _check_fields(body, {"delete_data", "security_pin"}, what)
    given = body.get("delete_data", False)
    if not isinstance(given, bool):
        raise CatalogValidationError("field 'delete_data' must be true or false")
    delete_data = given or request.query.get("delete_data", "").lower() in _TRUE
    pin = _optional_text(body, "security_pin") or request.query.get("security_pin")
    return delete_data, pin


async def delete_group(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    delete_data, pin = await deletion_options(request, "a protection group removal")
    group, deleted = await remove_group(
        ctx.catalog, ctx.pool, request.match_info["ref"], delete_data=delete_data, pin=pin
    )
    return web.json_response(
        {
            "removed": group.id,
            "name": group.name,
            "members": list(group.members),
            "recovery_points_deleted": len(deleted),
        }
    )


async def new_security_pin(request: web.Request) -> web.Response:
    pin, expires_at = await _ctx(request).catalog.new_security_pin()
    return web.json_response({"pin": pin, "expires_at": expires_at}, status=201)


def routes() -> list[web.RouteDef]:
    b = "/api/v1"
    return [
        web.get(f"{b}/protection-groups", list_groups),
        web.post(f"{b}/protection-groups", create_group),
        web.get(f"{b}/protection-groups/{{ref}}", get_group),
        web.patch(f"{b}/protection-groups/{{ref}}", patch_group),
        web.delete(f"{b}/protection-groups/{{ref}}", delete_group),
        web.post(f"{b}/security-pins", new_security_pin),
    ]
