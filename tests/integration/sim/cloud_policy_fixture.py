"""Helpers of the cloud policy table test (test_cloud_policy_table.py): an Azurite that
keeps its blobs across a stop, an Azure vault registered through the REST API with an
account SAS, and readers of Get-CloudConnection -Detailed and /metrics."""

from __future__ import annotations

import math
import ssl
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas
from azure.storage.blob.aio import ContainerClient
from prometheus_client.parser import text_string_to_metric_families

from server.metrics import METRICS_PATH
from tests.support.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, PersistentAzurite
from tests.support.sim import SimServer
from tests.support.stack import CliResult

__all__ = [
    "PASSPHRASE",
    "Metrics",
    "PersistentAzurite",
    "delete_container",
    "detailed_fields",
    "detailed_operations",
    "labelled",
    "register_sas",
    "sas_spec",
    "scrape",
    "whole_seconds_from_now",
]

PASSPHRASE = "correct horse battery staple"

# label pairs of one sample -> its value, by family name
Metrics = dict[str, dict[tuple[tuple[str, str], ...], float]]


def sas_spec(azurite: Azurite, container: str, expiry: datetime) -> dict[str, Any]:
    """An Azure vault spec with an account SAS (it may create the container, as New-Vault
    does) that the service stops honouring at `expiry` (whole seconds, real time)."""
    token = generate_account_sas(
        ACCOUNT,
        account_key=ACCOUNT_KEY,
        resource_types=ResourceTypes(container=True, object=True),
        permission=AccountSasPermissions(
            read=True, write=True, delete=True, list=True, add=True, create=True
        ),
        expiry=expiry,
    )
    return {
        "kind": "azure",
        "container": container,
        "account_url": azurite.blob_endpoint,
        "sas": token,
    }


def whole_seconds_from_now(seconds: float) -> datetime:
    """A SAS expiry `seconds` or a little more ahead (a SAS names whole seconds)."""
    return datetime.fromtimestamp(math.ceil(time.time() + seconds), UTC)


async def register_sas(sim: SimServer, azurite: Azurite, container: str, expiry: datetime) -> None:
    """New-Vault then Register-Vault through the REST API with a SAS expiring at `expiry`;
    again for the same container, it renews the registered vault's credential."""
    creds = await sim.api_ok("POST", "/vaults", {"backend": sas_spec(azurite, container, expiry)})
    await sim.api_ok(
        "POST", "/vault/registration", {"credentials": creds, "passphrase": PASSPHRASE}
    )


async def delete_container(azurite: Azurite, container: str) -> None:
    """What a lapsed subscription does to the vault: its container is gone."""
    client = ContainerClient.from_connection_string(azurite.connection_string(), container)
    async with client:
        await client.delete_container()


def detailed_fields(result: CliResult) -> dict[str, str]:
    """The key/value block of Get-CloudConnection -Detailed."""
    pairs = (line.partition(" : ") for line in result.out.split("\n\n", 1)[0].splitlines())
    return {k.strip(): v.strip() for k, sep, v in pairs if sep}


def detailed_operations(result: CliResult) -> dict[str, str]:
    """The operations table of Get-CloudConnection -Detailed: operation -> allowed|stopped."""
    lines = result.out.split("\n\n", 1)[1].splitlines()
    assert lines[0].split() == ["Operation", "Status", "Reason"], result.out
    out: dict[str, str] = {}
    for line in lines[2:]:
        words = line.split()
        # "backup to cloud  stopped  backup to cloud stopped by ...": three words, status.
        out[" ".join(words[:3])] = words[3]
    return out


async def scrape(sim: SimServer) -> Metrics:
    """GET /metrics (no token, like a Prometheus scraper), parsed by prometheus-client."""
    tls = ssl.create_default_context(cafile=sim.ca_file)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as http,
        http.get(sim.url + METRICS_PATH) as resp,
    ):
        text = await resp.text()
        assert resp.status == 200, text
    out: Metrics = {}
    for family in text_string_to_metric_families(text):
        series = out.setdefault(family.name, {})
        for sample in family.samples:
            series[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def labelled(samples: dict[tuple[tuple[str, str], ...], float], label: str) -> dict[str, float]:
    return {dict(k)[label]: v for k, v in samples.items()}
