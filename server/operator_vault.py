"""REST handlers of the vault (spec in server/api/__init__.py): New-Vault, Register-Vault,
Get-Vault, Set-VaultPassphrase and Unregister-Vault (server/vault_unregister.py).

Status codes: bad input (credentials file damaged, edited or expired; short passphrase;
bad backend spec; a location without a vault) 400; wrong passphrase or refused security
PIN 403; another vault already registered, or none registered, or (unregistering) a job
or sync using the vault, 409; a vault header that fails its integrity checks 422; the
storage refusing or failing 400 (credentials rejected, container gone) or 502. In every
refused case nothing was registered or changed.
Request bodies carry passphrases: they are never logged, and answers never echo them
(except a generated passphrase, returned once by the registration that made it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import structlog
from aiohttp import web

from server.context import CTX_KEY, ServerContext
from server.http_json import http_error, read_object
from server.operator_online import online_stats
from server.protection import require_pin
from server.vault_backends import describe, public_location
from server.vault_registry import (
    NotRegisteredError,
    OneVaultError,
    VaultInUseError,
    VaultRegistry,
)
from server.vault_state import RegistrationFileError
from server.vault_sync import sync_after_register
from server.vault_unregister import unregister_vault
from storage_pool.errors import IntegrityError as PoolIntegrityError
from storage_pool.vault.backend import AuthError, ContainerGone, VaultBackendError
from storage_pool.vault.format_errors import HeaderError, WrongPassphraseError

__all__ = ["registry_for", "routes"]

log = structlog.get_logger()

_REGISTER_FIELDS: Final = frozenset({"credentials", "passphrase", "generate_passphrase"})
_PASSPHRASE_FIELDS: Final = frozenset({"passphrase", "security_pin"})
# One registry per data dir for the life of the process (its lock serialises changes);
# the online tier reaches the same one through `registry_for`.
_REGISTRIES: dict[Path, VaultRegistry] = {}


def registry_for(ctx: ServerContext) -> VaultRegistry:
    key = ctx.config.data_dir.resolve()
    registry = _REGISTRIES.get(key)
    if registry is None:
        registry = VaultRegistry(key, clock=ctx.clock)
        _REGISTRIES[key] = registry
    return registry


def _ctx(request: web.Request) -> ServerContext:
    return request.app[CTX_KEY]


@contextlib.contextmanager
def _vault_errors(what: str) -> Iterator[None]:
    """Vault, key and storage errors as HTTP answers with their one-line reasons."""
    try:
        yield
    except WrongPassphraseError as err:
        log.warning("vault_refused", what=what, reason="wrong_passphrase")
        raise http_error(web.HTTPForbidden, str(err)) from err
    except (OneVaultError, NotRegisteredError, VaultInUseError) as err:
        raise http_error(web.HTTPConflict, str(err)) from err
    except (HeaderError, PoolIntegrityError) as err:
        log.error("vault_header_refused", what=what, error=str(err))
        raise http_error(web.HTTPUnprocessableEntity, str(err)) from err
    except (AuthError, ContainerGone) as err:
        raise http_error(web.HTTPBadRequest, f"vault storage: {err}") from err
    except VaultBackendError as err:
        log.warning("vault_storage_failed", what=what, error=str(err))
        raise http_error(web.HTTPBadGateway, f"vault storage: {err}") from err
    except RegistrationFileError as err:
        raise http_error(web.HTTPInternalServerError, str(err)) from err
    except ValueError as err:  # credentials file, passphrase length, backend spec
        log.warning("vault_refused", what=what, reason=str(err))
        raise http_error(web.HTTPBadRequest, str(err)) from err


def _check_fields(body: dict[str, Any], known: frozenset[str], what: str) -> None:
    extra = sorted(set(body) - known)
    if extra:
        raise http_error(
            web.HTTPBadRequest,
            f"unknown field(s) {', '.join(extra)} in {what}: known are {', '.join(sorted(known))}",
        )


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise http_error(web.HTTPBadRequest, f"field {key!r} must be a string")
    return value


async def new_vault(request: web.Request) -> web.Response:
    body = await read_object(request)
    _check_fields(body, frozenset({"backend"}), "a new vault")
    with _vault_errors("new_vault"):
        credentials = await registry_for(_ctx(request)).new_vault(body.get("backend"))
    return web.json_response(credentials.to_doc(), status=201)


async def register_vault(request: web.Request) -> web.Response:
    body = await read_object(request)
    _check_fields(body, _REGISTER_FIELDS, "a vault registration")
    generate = body.get("generate_passphrase", False)
    if not isinstance(generate, bool):
        raise http_error(web.HTTPBadRequest, "field 'generate_passphrase' must be true or false")
    passphrase = _text(body, "passphrase")
    if generate == (passphrase is not None):
        raise http_error(
            web.HTTPBadRequest,
            "give exactly one of 'passphrase' or 'generate_passphrase': true",
        )
    if "credentials" not in body:
        raise http_error(
            web.HTTPBadRequest, "field 'credentials' (the vault credentials file) is required"
        )
    with _vault_errors("register_vault"):
        outcome = await registry_for(_ctx(request)).register(
            body["credentials"], passphrase, generate=generate
        )
    reg = outcome.registration
    answer: dict[str, Any] = {
        "vault_id": reg.vault_id,
        "created_keys": outcome.created_keys,
        "state": outcome.header.state.value,
        "location": public_location(reg.backend),
        "description": describe(reg.backend),
        "registered_at": reg.registered_at,
        "generated_passphrase": outcome.generated_passphrase,
    }
    # The catalog learns the vault's online RPs (a fresh server lists them all).
    registry = registry_for(_ctx(request))
    with registry.in_use("vault sync"):
        answer["sync"] = await sync_after_register(registry, _ctx(request).catalog)
    return web.json_response(answer, status=201)


async def get_vault(request: web.Request) -> web.Response:
    with _vault_errors("get_vault"):
        doc = await registry_for(_ctx(request)).status()
    if doc["registered"]:
        doc.update(await online_stats(_ctx(request)))
    return web.json_response(doc)


async def set_vault_passphrase(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    body = await read_object(request)
    _check_fields(body, _PASSPHRASE_FIELDS, "a vault passphrase change")
    passphrase = _text(body, "passphrase")
    if not passphrase:
        raise http_error(web.HTTPBadRequest, "field 'passphrase' (the new passphrase) is required")
    pin = _text(body, "security_pin")

    async def use_pin() -> None:
        await require_pin(
            ctx.catalog, pin, "set-vault-passphrase", "changing the vault passphrase needs it"
        )

    with _vault_errors("set_vault_passphrase"):
        header = await registry_for(ctx).change_passphrase(passphrase, use_pin)
    return web.json_response(
        {"vault_id": header.vault_id_hex, "header_generation": header.generation}
    )


async def delete_registration(request: web.Request) -> web.Response:
    """Unregister-Vault; the PIN from the body (the CLI's way: out of access logs) or the
    query."""
    ctx = _ctx(request)
    body = await read_object(request, empty_ok=True)
    _check_fields(body, frozenset({"security_pin"}), "a vault unregistration")
    pin = _text(body, "security_pin") or request.query.get("security_pin")
    with _vault_errors("unregister_vault"):
        done = await unregister_vault(ctx, registry_for(ctx), pin)
    return web.json_response(done.to_json())


def routes() -> list[web.RouteDef]:
    b = "/api/v1"
    return [
        web.post(f"{b}/vaults", new_vault),
        web.post(f"{b}/vault/registration", register_vault),
        web.delete(f"{b}/vault/registration", delete_registration),
        web.get(f"{b}/vault", get_vault),
        web.post(f"{b}/vault/passphrase", set_vault_passphrase),
    ]
