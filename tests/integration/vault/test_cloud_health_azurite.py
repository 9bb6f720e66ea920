"""The vault connection monitor (server/cloud_health.py) against a real Azurite.

Real conditions, no flags set by hand: Azurite running (connected, active); Azurite
stopped (disconnected, reason tcp), then the server's clock moved past 15 days (lost); the
container deleted (deprovisioned after the configured number of probes, online RPs marked
deleted), then restored with its header (active again); a SAS that expires (expired after
the configured number of probes), then a fresh SAS registered (active again).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from azure.storage.blob.aio import ContainerClient

from server.cloud_status import Connectivity, ContactFailure
from storage_pool.vault.format import HEADER_NAME
from storage_pool.vault.header import VaultState
from tests.support.azurite import ACCOUNT, ACCOUNT_KEY, Azurite
from tests.unit.server.catalog_fixture import FakeClock
from tests.unit.server.health_fixture import monitored, prepare_location, register_spec

DAY = 86400.0


def container_name() -> str:
    return f"h{uuid.uuid4().hex[:20]}"


def key_spec(azurite: Azurite, container: str) -> dict[str, Any]:
    return {
        "kind": "azure",
        "container": container,
        "connection_string": azurite.connection_string(),
    }


def sas_spec(azurite: Azurite, container: str, expiry: datetime) -> dict[str, Any]:
    token = generate_container_sas(
        ACCOUNT,
        container,
        account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True),
        expiry=expiry,
    )
    return {
        "kind": "azure",
        "container": container,
        "account_url": azurite.blob_endpoint,
        "sas": token,
    }


async def test_stopped_service_disconnects_then_is_lost_after_15_days(tmp_path: Path) -> None:
    clock = FakeClock()
    own = Azurite()  # this test stops its service: not the module's shared one
    await own.start()
    try:
        spec = key_spec(own, container_name())
        await prepare_location(spec)
        async with monitored(tmp_path, clock) as m:
            await register_spec(m.registry, spec, clock.now)
            clock.now += 300
            status = await m.health.probe()
            assert (status.connectivity, status.vault_state) == (
                Connectivity.CONNECTED,
                VaultState.ACTIVE,
            )
            assert status.connected and status.last_success == clock.now
            await own.stop()
            clock.now += 300
            down = await m.health.probe()
            assert (down.connectivity, down.vault_state) == (
                Connectivity.DISCONNECTED,
                VaultState.ACTIVE,
            )
            assert down.last_reason is ContactFailure.TCP
            assert down.last_success == clock.now - 300
            clock.now += 15 * DAY
            lost = await m.health.probe()
            assert (lost.connectivity, lost.vault_state) == (Connectivity.LOST, VaultState.ACTIVE)
            assert lost.since_contact_seconds == 15 * DAY + 300
            alert = await m.open_alert()
            assert alert is not None and alert.details["connectivity"] == "lost"
    finally:
        await own.stop()
        own.close_log()


async def test_deleted_container_deprovisions_and_deletes_online_rps(
    tmp_path: Path, azurite: Azurite
) -> None:
    clock = FakeClock()
    container = container_name()
    spec = key_spec(azurite, container)
    await prepare_location(spec)
    async with monitored(tmp_path, clock, rejections=2) as m:
        await register_spec(m.registry, spec, clock.now)
        rp_ids = await m.add_online_rps(2)
        assert (await m.health.probe()).connected
        client = ContainerClient.from_connection_string(azurite.connection_string(), container)
        async with client:
            header = await (await client.download_blob(HEADER_NAME)).readall()
            await client.delete_container()
            first = await m.health.probe()
            assert (first.connectivity, first.vault_state) == (
                Connectivity.DISCONNECTED,
                VaultState.ACTIVE,
            )
            assert first.last_reason is ContactFailure.NOT_FOUND
            second = await m.health.probe()
            assert second.vault_state is VaultState.DEPROVISIONED
            assert await m.catalog.list_online_rps() == []
            deleted = await m.catalog.list_online_rps(include_deleted=True)
            assert sorted(r.id for r in deleted) == rp_ids
            # The container comes back with the vault in it: active again.
            await client.create_container()
            await client.upload_blob(HEADER_NAME, header)
        back = await m.health.probe()
        assert (back.connectivity, back.vault_state) == (Connectivity.CONNECTED, VaultState.ACTIVE)
        assert await m.open_alert() is None


async def test_expired_sas_expires_the_vault_until_a_fresh_one_is_registered(
    tmp_path: Path, azurite: Azurite
) -> None:
    clock = FakeClock()
    container = container_name()
    await prepare_location(key_spec(azurite, container))
    expiry = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    async with monitored(tmp_path, clock, rejections=2) as m:
        await register_spec(m.registry, sas_spec(azurite, container, expiry), clock.now)
        assert (await m.health.probe()).connected
        # Wait (real time: the SAS is checked by the service) until the SAS has expired.
        await asyncio.sleep(max(0.0, expiry.timestamp() - time.time()) + 1.0)
        first = await m.health.probe()
        assert (first.connectivity, first.vault_state) == (
            Connectivity.DISCONNECTED,
            VaultState.ACTIVE,
        )
        assert first.last_reason is ContactFailure.AUTHENTICATION
        assert first.last_error is not None and "sig=" not in first.last_error.replace(
            "sig=<hidden>", ""
        )
        second = await m.health.probe()
        assert (second.connectivity, second.vault_state) == (
            Connectivity.DISCONNECTED,
            VaultState.EXPIRED,
        )
        assert m.changes[-1][1].vault_state is VaultState.EXPIRED
        # Register-Vault again with a fresh SAS: it reached the vault, which answers again.
        clock.now += 60
        fresh = sas_spec(azurite, container, datetime.now(UTC) + timedelta(hours=1))
        await register_spec(m.registry, fresh, clock.now)
        await m.health.settle()
        assert m.health.status().connected
        clock.now += 60
        probed = await m.health.probe()
        assert (probed.connectivity, probed.vault_state) == (
            Connectivity.CONNECTED,
            VaultState.ACTIVE,
        )
        assert await m.open_alert() is None
