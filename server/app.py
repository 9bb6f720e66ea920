"""The aiohttp application: middlewares, the data plane and the operator API."""

from __future__ import annotations

import json

import structlog
from aiohttp import web

from server.auth import Handler, auth_middleware
from server.capacity import InsufficientStorageError
from server.catalog_errors import (
    CatalogError,
    CatalogValidationError,
    ConflictError,
    InvalidStateError,
    NotFoundError,
    SecurityPinError,
    TokenError,
)
from server.cloud_status import CloudPolicyRefused
from server.context import CTX_KEY, ServerContext
from server.data_plane import MAX_BODY, DataPlane
from server.http_json import error_response
from server.metrics import REGISTRY_KEY, new_registry
from server.metrics import routes as metrics_routes
from server.operator_api import routes as operator_routes
from storage_pool.errors import RecoveryPointNotFoundError

log = structlog.get_logger()

DATA_PLANE_KEY = web.AppKey("stockade_data_plane", DataPlane)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as {"error": ...}; an unexpected one is logged, never crashes."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        text = exc.text or exc.reason
        try:
            json.loads(text)
        except ValueError:
            return error_response(exc.status, text)
        return web.Response(status=exc.status, text=text, content_type="application/json")
    except NotFoundError as err:
        return error_response(404, str(err))
    except RecoveryPointNotFoundError as err:
        return error_response(404, str(err))
    except (ConflictError, InvalidStateError, CloudPolicyRefused) as err:
        # A policy refusal names the connectivity and vault state (server/cloud_gate.py).
        return error_response(409, str(err))
    except (TokenError, SecurityPinError) as err:
        return error_response(403, str(err))
    except InsufficientStorageError as err:
        return error_response(507, str(err))
    except (CatalogValidationError, ValueError) as err:
        return error_response(400, str(err))
    except CatalogError as err:
        log.error("catalog_error", path=request.path, error=str(err))
        return error_response(500, str(err))
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception as err:
        log.exception("request_failed", path=request.path, method=request.method)
        return error_response(500, f"internal error: {type(err).__name__}: {err}")


def make_app(ctx: ServerContext) -> web.Application:
    app = web.Application(middlewares=[error_middleware, auth_middleware], client_max_size=MAX_BODY)
    app[CTX_KEY] = ctx
    plane = DataPlane(ctx)
    app[DATA_PLANE_KEY] = plane
    app.add_routes(plane.routes())
    app.add_routes(operator_routes())
    app[REGISTRY_KEY] = new_registry()  # one registry per server, never the global one
    app.add_routes(metrics_routes())
    return app
