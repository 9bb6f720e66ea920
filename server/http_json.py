"""JSON bodies of the HTTP API: reading request objects and shaping error answers.

Every error the API sends is ``{"error": "<one-line reason>"}``; building it with
``json.dumps`` (never by string formatting) keeps a reason with quotes valid JSON.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web

E = TypeVar("E", bound=web.HTTPException)


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def http_error(cls: type[E], message: str, **kwargs: Any) -> E:
    """An aiohttp HTTP exception carrying the JSON error body."""
    return cls(text=json.dumps({"error": message}), content_type="application/json", **kwargs)


async def read_object(request: web.Request, *, empty_ok: bool = False) -> dict[str, Any]:
    """The request's JSON object; 400 for anything else (an empty body is {} if allowed)."""
    if empty_ok and not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError as err:
        raise http_error(web.HTTPBadRequest, f"request body is not JSON: {err}") from err
    if not isinstance(body, dict):
        raise http_error(web.HTTPBadRequest, "request body must be a JSON object")
    return body
