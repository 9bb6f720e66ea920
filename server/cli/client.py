"""A small synchronous client for the operator REST API (see ``server/api/__init__.py``).

Why ``urllib.request`` and not aiohttp: the CLI is a short-lived program that makes one
request at a time, so an event loop buys nothing; the stdlib client imports in ~50 ms where
aiohttp takes ~350 ms on every ``stockade`` call, and Ctrl-C during ``Wait-Job`` needs no loop
teardown. Each request has a 30 s socket timeout. Proxies from the environment are ignored
(like aiohttp's default ``trust_env=False``): the backup server is reached directly and its
private CA would not survive a proxy anyway.

Error mapping (exit codes from ``server/cli/errors.py``): connection refused, DNS, TLS,
timeouts, 401, 503 and non-JSON answers raise :class:`UnreachableError` (3) with one
line naming the server URL; 400/404 and 403 (a security PIN refused: the operator token
itself is refused with 401) raise :class:`UsageError` (2); other statuses (409, 422, 5xx)
raise :class:`CliError` (1). The message is the server's ``{"error"}``.
"""

import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any, Final

from server.cli.config import Connection
from server.cli.errors import CliError, UnreachableError, UsageError

__all__ = ["DEFAULT_TIMEOUT", "ApiClient", "segment"]

DEFAULT_TIMEOUT: Final = 30.0
_MAX_ERROR_BODY: Final = 64 * 1024

Query = Mapping[str, str | int | None]


def segment(value: str) -> str:
    """Quote ``value`` as one URL path segment (ids and names may hold ``/`` or ``:``)."""
    return urllib.parse.quote(value, safe="")


def _ssl_context(ca_pem: str | None) -> ssl.SSLContext:
    # With cadata only that CA is trusted (no system store): the server's CA is private.
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _reason(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({error.verify_message}); pass -CaFile"
    if isinstance(error, ssl.SSLError):
        return f"TLS error ({error.reason or error})"
    if isinstance(error, TimeoutError):
        return "no answer within the timeout"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__


class ApiClient:
    """Calls ``/api/v1`` on one server with the operator token; JSON in, JSON out."""

    def __init__(self, connection: Connection, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.connection = connection
        self._timeout = timeout
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if connection.server_url.startswith("https:"):
            handlers.append(urllib.request.HTTPSHandler(context=_ssl_context(connection.ca_pem)))
        self._opener = urllib.request.build_opener(*handlers)

    @property
    def server_url(self) -> str:
        return self.connection.server_url

    def get(self, path: str, query: Query | None = None) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        return self.request("POST", path, body={} if body is None else body)

    def delete(self, path: str, query: Query | None = None) -> Any:
        return self.request("DELETE", path, query=query)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        """Send one request to ``/api/v1{path}``; return the decoded JSON (None if empty)."""
        url = self.connection.api_url + path
        if query:
            pairs = {k: str(v) for k, v in query.items() if v is not None}
            if pairs:
                url += "?" + urllib.parse.urlencode(pairs)
        headers = {
            "Accept": "application/json",
            "Authorization": f"Bearer {self.connection.token}",
        }
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        where = f"{method} {path}"
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                raw: bytes = response.read()
        except urllib.error.HTTPError as error:
            with error:
                raise self._http_error(error, where) from error
        except urllib.error.URLError as error:
            raise UnreachableError(
                f"cannot reach {self.server_url}: {_reason(error.reason)}"
            ) from error
        except (OSError, http.client.HTTPException) as error:
            raise UnreachableError(f"cannot reach {self.server_url}: {_reason(error)}") from error
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UnreachableError(
                f"{self.server_url} answered {where} with something that is not JSON; "
                "is it a Stockade server?"
            ) from error

    def _http_error(self, error: urllib.error.HTTPError, where: str) -> CliError:
        try:
            raw = error.read(_MAX_ERROR_BODY)
        except (OSError, http.client.HTTPException):
            raw = b""
        reason = ""
        try:
            decoded = json.loads(raw)
            if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
                reason = decoded["error"]
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
        status = error.code
        if status in {404, 405} and not reason:
            # Not the API's {"error"}: a route this server does not have.
            return UnreachableError(
                f"{self.server_url} does not serve {where}; is it a Stockade server "
                "of this version?"
            )
        if status == 403 and reason:
            # The API's own 403: the operator token passed (a wrong one is 401) but the
            # operation was refused, e.g. a missing or wrong security PIN: bad input.
            return UsageError(reason)
        reason = reason or str(error.reason) or "no reason given"
        if status in {401, 403}:
            return UnreachableError(
                f"{self.server_url} refused the operator token ({status}: {reason})"
            )
        if status == 503:
            return UnreachableError(f"{self.server_url} is not ready ({reason})")
        if status in {400, 404}:
            return UsageError(reason)
        return CliError(f"{where} failed ({status}): {reason}")
