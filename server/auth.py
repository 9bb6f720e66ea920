"""Authentication of HTTP requests: agents by their credential, operators by a token.

Agents send ``Authorization: Bearer <agent_id>:<secret>``; the catalog keeps only a hash
of the secret. Operators send ``Authorization: Bearer <token>`` with the token the server
keeps in ``<data_dir>/operator.token`` (0600) and in the CLI config it writes. Requests
to ``/api/v1/agent/`` need an agent; the rest of ``/api/v1/`` needs an operator, except
``/api/v1/health`` and ``/api/v1/register`` (where the one-time token is the credential).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from agent import protocol as p
from server.catalog import AgentRow
from server.context import CTX_KEY
from server.http_json import http_error

log = structlog.get_logger()

AGENT_KEY = web.RequestKey("stockade_agent", AgentRow)
PUBLIC = frozenset({"/api/v1/health", "/api/v1/register", "/metrics"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _unauthorized(message: str) -> web.HTTPUnauthorized:
    return http_error(
        web.HTTPUnauthorized, message, headers={"WWW-Authenticate": 'Bearer realm="stockade"'}
    )


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path in PUBLIC or not path.startswith("/api/"):
        return await handler(request)
    ctx = request.app[CTX_KEY]
    token = _bearer(request)
    if token is None:
        raise _unauthorized("missing bearer token")
    if path.startswith(p.AGENT_API + "/"):
        agent_id, sep, secret = token.partition(":")
        agent = await ctx.catalog.authenticate_agent(agent_id, secret) if sep else None
        if agent is None:
            log.warning("agent_auth_failed", agent_id=agent_id[:64], peer=request.remote)
            raise _unauthorized("unknown agent or wrong credential")
        request[AGENT_KEY] = agent
        return await handler(request)
    if not hmac.compare_digest(token.encode(), ctx.operator_token.encode()):
        log.warning("operator_auth_failed", peer=request.remote)
        raise _unauthorized("wrong operator token")
    return await handler(request)
