"""One connection probe of the registered vault (the monitor, server/cloud_health.py, runs it).

In order, one attempt each (no retries: the monitor probes again next round):

1. read the vault header: `HeaderMissing` when the container answers without one;
2. check it with the registration's keys (structure, vault id, MAC, generation), through
   the registry's cached unlock, so a probe runs no KDF while the header is unchanged;
3. write ``PROBE_BYTES`` random bytes under `probe_object_name`, then delete them.

The probe object's name is ``probe/<32 hex>``, an HMAC of the vault id under the vault's
names subkey: outside the vault's ``data/`` namespace (never listed, never collected),
telling nothing without the key, and the same every time, so an interrupted probe leaves at
most one small object behind. Its content is random: nothing in clear.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

from server.vault_registry import VaultRegistry
from storage_pool.vault.backend import NotFound, VaultBackend
from storage_pool.vault.format import HEADER_NAME
from storage_pool.vault.header import VaultState
from storage_pool.vault.keys import VaultKeys

__all__ = ["PROBE_BYTES", "PROBE_PREFIX", "HeaderMissing", "probe_object_name", "probe_vault"]

PROBE_PREFIX: Final = "probe/"
PROBE_BYTES: Final = 32


class HeaderMissing(Exception):
    """The container answered but holds no vault header (the monitor counts it as gone)."""

    def __init__(self, err: NotFound) -> None:
        super().__init__(f"the vault header {HEADER_NAME} is missing: {err}")
        self.err = err


def probe_object_name(keys: VaultKeys) -> str:
    tag = hmac.new(keys.name_key, b"probe\0" + keys.vault_id, hashlib.sha256).hexdigest()
    return f"{PROBE_PREFIX}{tag[:32]}"


async def probe_vault(backend: VaultBackend, registry: VaultRegistry) -> VaultState:
    """Probe through `backend` (the caller closes it); the state the header says.
    Backend errors, `HeaderMissing` and the registry's header errors propagate."""
    try:
        raw = await backend.get(HEADER_NAME)
    except NotFound as err:
        raise HeaderMissing(err) from err
    unlocked = await registry.verify_header(raw)
    name = probe_object_name(unlocked.keys)
    data = secrets.token_bytes(PROBE_BYTES)
    await backend.put(name, data, sha256=hashlib.sha256(data).digest())
    await backend.delete(name)
    return unlocked.header.state
