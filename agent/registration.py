"""First contact with a server: trade a one-time token for an agent identity.

``POST {server}/api/v1/register {"token", "name", "hostname", "version"}`` answers
``{"agent_id", "credential", "ca_pem", "server_url", "mqtt_url", "command_key"}``; an
unknown, used or expired token is a 403 with ``{"error"}``.

Trust on first contact. The server's certificate is signed by the server's own private
CA, which the agent does not have yet. Two ways, chosen by the operator:

* ``--ca-file F`` (recommended where the CA can be copied over safely): TLS verifies the
  server against that CA (hostname checked) before the token is sent, and the CA the
  server returns must be the same certificate.
* Without it, trust on first use (TOFU, like SSH's first connection): the request is sent
  over TLS *without* verifying the server, and the CA in the answer is pinned for
  everything after (HTTP and MQTT). Its SHA-256 fingerprint is printed so the operator can
  compare it with the one the server prints; until compared, an active attacker on the
  path during this one request could have answered instead of the server. A passive
  eavesdropper learns nothing (the channel is encrypted), and the token is single use.
  After pinning, :func:`check_pinned` makes one verified request, so a wrong pin or a
  certificate without the right host name is reported at once, not at the first backup.

We chose TOFU as the default over refusing to register without a CA file because the
token already proves the operator's intent, the fingerprint gives a real check at no
cost, and the usual alternative (trusting the system CA store) does not apply to a
private CA. Registration is never retried: the token is consumed by the first request
that reaches the server, so a retry after a lost answer could only fail.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent import __version__
from agent.config import AgentIdentity
from agent.dataplane_errors import DataPlaneError, classify, raise_for_answer
from agent.http_client import ssl_context_for

__all__ = [
    "RegistrationError",
    "RegistrationResult",
    "ca_fingerprint",
    "check_pinned",
    "register",
]

REGISTER_PATH: Final = "/api/v1/register"
HEALTH_PATH: Final = "/api/v1/health"
_TIMEOUT: Final = aiohttp.ClientTimeout(total=60, connect=15)


class RegistrationError(Exception):
    """Registration failed; the message is meant for the operator."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class RegistrationResult:
    identity: AgentIdentity
    ca_fingerprint: str
    pinned_on_first_use: bool


def ca_fingerprint(ca_pem: str) -> str:
    """SHA-256 of the (first) CA certificate's DER, as ``AB:CD:...`` (openssl's style)."""
    try:
        cert = x509.load_pem_x509_certificate(ca_pem.encode())
    except ValueError as err:
        raise RegistrationError(f"the CA certificate is not valid PEM: {err}") from err
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _tofu_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # trust on first use: see the module docstring
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _answer_field(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise RegistrationError(f"the server's answer has no {key!r}")
    return value


async def register(
    server_url: str,
    token: str,
    *,
    name: str,
    hostname: str,
    ca_pem: str | None = None,
) -> RegistrationResult:
    """Register with the server at ``server_url`` (``https://host:port``).

    ``ca_pem``: the CA to verify the server with (``--ca-file``); ``None`` means trust on
    first use. Raises :class:`RegistrationError` with the server's reason on refusal.
    """
    parts = urlsplit(server_url)
    if parts.scheme != "https" or not parts.hostname:
        raise RegistrationError(f"server URL {server_url!r} must be https://host[:port]")
    ctx = ssl_context_for(ca_pem) if ca_pem is not None else _tofu_context()
    url = server_url.rstrip("/") + REGISTER_PATH
    what = f"registration at {server_url}"
    body = {"token": token, "name": name, "hostname": hostname, "version": __version__}
    try:
        async with (
            aiohttp.ClientSession(
                timeout=_TIMEOUT, connector=aiohttp.TCPConnector(ssl=ctx)
            ) as http,
            http.post(url, json=body) as resp,
        ):
            try:
                await raise_for_answer(what, resp)
            except DataPlaneError as err:
                if err.status == 403:
                    raise RegistrationError(
                        f"the server refused the token: {err.error}", err.status
                    ) from err
                raise RegistrationError(
                    f"the server refused the registration: {err.error} (HTTP {err.status})",
                    err.status,
                ) from err
            try:
                doc = await resp.json(content_type=None)
            except ValueError as err:
                raise RegistrationError(f"the server's answer is not JSON: {err}") from err
    except (aiohttp.ClientError, TimeoutError) as err:
        raise RegistrationError(str(classify(what, err))) from err
    if not isinstance(doc, dict):
        raise RegistrationError("the server's answer is not an object")
    returned_ca = _answer_field(doc, "ca_pem")
    fingerprint = ca_fingerprint(returned_ca)
    if ca_pem is not None and ca_fingerprint(ca_pem) != fingerprint:
        raise RegistrationError(
            f"the server returned a CA ({fingerprint}) other than the --ca-file one"
            f" ({ca_fingerprint(ca_pem)}); nothing was saved"
        )
    identity = AgentIdentity(
        agent_id=_answer_field(doc, "agent_id"),
        credential=_answer_field(doc, "credential"),
        server_url=_answer_field(doc, "server_url"),
        mqtt_url=_answer_field(doc, "mqtt_url"),
        ca_pem=returned_ca,
        command_key=_answer_field(doc, "command_key"),
        mqtt_password=str(doc.get("mqtt_password") or ""),
    )
    return RegistrationResult(identity, fingerprint, pinned_on_first_use=ca_pem is None)


async def check_pinned(identity: AgentIdentity) -> str | None:
    """One verified request to ``identity.server_url`` with the pinned CA.

    Returns None when the server's certificate verifies (CA and host name), else why not.
    """
    ctx = ssl_context_for(identity.ca_pem)
    url = identity.server_url.rstrip("/") + HEALTH_PATH
    try:
        async with (
            aiohttp.ClientSession(
                timeout=_TIMEOUT, connector=aiohttp.TCPConnector(ssl=ctx)
            ) as http,
            http.get(url) as resp,
        ):
            await resp.read()
    except (aiohttp.ClientError, TimeoutError) as err:
        return str(classify(f"verified request to {url}", err))
    return None
