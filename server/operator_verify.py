"""REST handlers of Set-Throttling and Start-Verify.

    GET  /api/v1/throttling      the upload throttling setting (server/throttling.py)
    PUT  /api/v1/throttling      change some of its fields; 400 names a bad value
    POST /api/v1/jobs/verify     {"tier": "disk"|"cloud", "sample": 0.1?, "seed": int?}:
                                 a queued VERIFY job (201); 409 without a vault for the
                                 cloud tier or while another verify job is active

Throttling documents: ``enabled``, ``work_bps``, ``non_work_bps`` (bits per second, or
strings like "10Mbps" on PUT), ``work_days`` (0 Monday .. 6 Sunday, or day names on PUT),
``work_start``, ``work_end`` (whole hours; "08:00" on PUT); answers add readable
``work_hour_bandwidth``, ``non_work_hour_bandwidth`` and ``work_day_names``.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from server.context import CTX_KEY, ServerContext
from server.http_json import http_error, read_object
from server.operator_vault import registry_for
from server.throttling import ThrottleSettingError, load_setting, throttle_for, update_setting
from server.verify_jobs import VerifyRunner

__all__ = ["routes", "verify_runner_for"]

# One runner per data dir (as registry_for): the daemon runs its jobs, handlers queue them.
_RUNNERS: dict[Path, VerifyRunner] = {}


def verify_runner_for(ctx: ServerContext) -> VerifyRunner:
    key = ctx.config.data_dir.resolve()
    runner = _RUNNERS.get(key)
    if runner is None or runner.catalog is not ctx.catalog:
        runner = VerifyRunner(ctx.catalog, ctx.pool, registry_for(ctx), ctx.clock)
        _RUNNERS[key] = runner
    return runner


def _ctx(request: web.Request) -> ServerContext:
    return request.app[CTX_KEY]


async def get_throttling(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    try:
        setting = await load_setting(ctx.catalog)
    except ThrottleSettingError as err:
        raise http_error(web.HTTPInternalServerError, str(err)) from err
    return web.json_response(setting.describe())


async def put_throttling(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    body = await read_object(request)
    # ThrottleSettingError is a ValueError: 400 with its message, through the middleware.
    setting = await update_setting(ctx.catalog, body, throttle_for(ctx))
    return web.json_response(setting.describe())


async def start_verify(request: web.Request) -> web.Response:
    """Refusals come through the app's error middleware: a bad tier or sample 400, no vault
    for the cloud tier or another verify job active 409."""
    from server.operator_api import job_json  # noqa: PLC0415 (operator_api imports us)

    ctx = _ctx(request)
    body = await read_object(request, empty_ok=True)
    unknown = sorted(set(body) - {"tier", "sample", "seed"})
    if unknown:
        raise http_error(web.HTTPBadRequest, f"unknown field(s) {', '.join(unknown)}")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise http_error(web.HTTPBadRequest, "field 'seed' must be an integer")
    job = await verify_runner_for(ctx).start(
        body.get("tier", "disk"), sample=body.get("sample"), seed=seed
    )
    return web.json_response(job_json(job), status=201)


def routes() -> list[web.RouteDef]:
    b = "/api/v1"
    return [
        web.get(f"{b}/throttling", get_throttling),
        web.put(f"{b}/throttling", put_throttling),
        web.post(f"{b}/jobs/verify", start_verify),
    ]
