"""``/metrics`` (server/metrics.py) and the cloud connection routes (server/operator_connection.py).

The text is checked with prometheus-client's own parser. Cloud values come from real
`CloudStatus` values in each state of the policy table; the endpoint tests run the real
aiohttp application (`make_app`) on loopback over a real catalog, pool and scratch folder,
with no connectivity monitor (``ctx.cloud`` None): the cloud families are then empty
and the connection routes answer 503, which the CLI reports as "not ready" (exit 3).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import REGISTRY as GLOBAL_REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from server.app import make_app
from server.capacity import PoolCapacity
from server.catalog import Catalog, JobKind, JobState
from server.cli.main import main
from server.cloud_status import CloudStatus, Connectivity, ContactFailure, Operation, decisions
from server.config import load_server_config
from server.context import ServerContext
from server.metrics import ScratchGauges, Snapshot, new_registry, render
from server.operator_connection import NOT_RUNNING
from storage_pool.vault.header import VaultState
from tests.unit.pool.pool_opener import PoolOpener

NOW = 1_767_268_800.0
DAY = 86400.0
TOKEN = "operator-token-metrics"
MiB = 1 << 20

CLOUD_FAMILIES = {
    "stockade_cloud_connected",
    "stockade_cloud_connectivity",
    "stockade_cloud_last_contact_timestamp_seconds",
    "stockade_cloud_seconds_since_contact",
    "stockade_cloud_last_failure_timestamp_seconds",
    "stockade_vault_state",
    "stockade_cloud_operation_allowed",
}
OTHER_FAMILIES = {
    "stockade_build_info",
    "stockade_pool_size_bytes",
    "stockade_pool_used_bytes",
    "stockade_pool_free_bytes",
    "stockade_pool_reserve_bytes",
    "stockade_scratch_bound_bytes",
    "stockade_scratch_used_bytes",
    "stockade_scratch_capacity_bytes",
    "stockade_scratch_high_water_bytes",
}

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse(text: str) -> Samples:
    """Family name -> {sorted label pairs: value}; every family listed, even empty ones."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge", family.name
        series = out.setdefault(family.name, {})
        for sample in family.samples:
            series[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def by_label(samples: Samples, family: str, label: str) -> dict[str, float]:
    return {dict(k)[label]: v for k, v in samples[family].items()}


def value(samples: Samples, family: str) -> float | None:
    series = samples[family]
    return series[()] if series else None


POOL = PoolCapacity(Path("/pool"), 1000 * MiB, 600 * MiB, 400 * MiB, 50 * MiB)
SCRATCH = ScratchGauges(64 * MiB, 3 * MiB, 500 * MiB, 40 * MiB)

STATES = {
    "connected-active": (Connectivity.CONNECTED, VaultState.ACTIVE, NOW - 60),
    "connected-expired": (Connectivity.CONNECTED, VaultState.EXPIRED, NOW - 60),
    "connected-deprovisioned": (Connectivity.CONNECTED, VaultState.DEPROVISIONED, NOW - 60),
    "disconnected-active": (Connectivity.DISCONNECTED, VaultState.ACTIVE, NOW - 2 * DAY),
    "lost-active": (Connectivity.LOST, VaultState.ACTIVE, NOW - 16 * DAY),
    "lost-expired": (Connectivity.LOST, VaultState.EXPIRED, NOW - 20 * DAY),
    "lost-deprovisioned": (Connectivity.LOST, VaultState.DEPROVISIONED, NOW - 30 * DAY),
    "not-registered": (Connectivity.NOT_REGISTERED, None, None),
}


def cloud_status(
    connectivity: Connectivity, vault_state: VaultState | None, last_success: float | None
) -> CloudStatus:
    failed = connectivity in (Connectivity.DISCONNECTED, Connectivity.LOST)
    return CloudStatus(
        connectivity=connectivity,
        vault_state=vault_state,
        vault=None if vault_state is None else "folder /srv/vault",
        last_success=last_success,
        last_failure=NOW - 30 if failed else None,
        last_error="timed out" if failed else None,
        last_reason=ContactFailure.TIMEOUT if failed else None,
        last_probe=NOW - 30 if vault_state is not None else None,
        checked_at=NOW,
        lost_after_seconds=15 * DAY,
    )


@pytest.mark.parametrize("name", list(STATES))
def test_text_parses_with_the_cloud_state(name: str) -> None:
    status = cloud_status(*STATES[name])
    text = render(new_registry(), Snapshot(status, POOL, SCRATCH)).decode()
    samples = parse(text)
    assert set(samples) == CLOUD_FAMILIES | OTHER_FAMILIES
    assert value(samples, "stockade_cloud_connected") == float(name == "connected-active")
    connectivity = by_label(samples, "stockade_cloud_connectivity", "state")
    assert connectivity == {c.value: float(c is status.connectivity) for c in Connectivity}
    vault = by_label(samples, "stockade_vault_state", "state")
    assert vault == {s.value: float(s is status.vault_state) for s in VaultState}
    allowed = by_label(samples, "stockade_cloud_operation_allowed", "operation")
    assert allowed == {op.value: float(d.allowed) for op, d in decisions(status).items()}
    assert value(samples, "stockade_cloud_last_contact_timestamp_seconds") == status.last_success
    assert value(samples, "stockade_cloud_seconds_since_contact") == status.since_contact_seconds
    assert value(samples, "stockade_cloud_last_failure_timestamp_seconds") == status.last_failure
    assert value(samples, "stockade_pool_size_bytes") == 1000 * MiB
    assert value(samples, "stockade_pool_used_bytes") == 400 * MiB
    assert value(samples, "stockade_pool_free_bytes") == 600 * MiB
    assert value(samples, "stockade_pool_reserve_bytes") == 50 * MiB
    assert value(samples, "stockade_scratch_bound_bytes") == 64 * MiB
    assert value(samples, "stockade_scratch_used_bytes") == 3 * MiB
    assert value(samples, "stockade_scratch_capacity_bytes") == 500 * MiB
    assert value(samples, "stockade_scratch_high_water_bytes") == 40 * MiB


def test_the_table_rows_as_series() -> None:
    """Spot checks against shared/DESIGN.md's table, independent of `decisions`."""
    lost = parse(
        render(
            new_registry(), Snapshot(cloud_status(*STATES["lost-active"]), POOL, SCRATCH)
        ).decode()
    )
    assert by_label(lost, "stockade_cloud_operation_allowed", "operation") == {
        Operation.BACKUP_TO_CLOUD.value: 0.0,
        Operation.BACKUP_TO_DISK.value: 0.0,
        Operation.RESTORE_FROM_CLOUD.value: 1.0,
        Operation.RESTORE_FROM_DISK.value: 1.0,
    }
    assert value(lost, "stockade_cloud_seconds_since_contact") == 16 * DAY
    gone = cloud_status(*STATES["connected-deprovisioned"])
    text = render(new_registry(), Snapshot(gone, POOL, SCRATCH)).decode()
    assert set(by_label(parse(text), "stockade_cloud_operation_allowed", "operation").values()) == {
        0.0
    }


def test_never_contacted_and_no_monitor_leave_families_empty() -> None:
    never = cloud_status(Connectivity.LOST, VaultState.ACTIVE, None)
    samples = parse(render(new_registry(), Snapshot(never, POOL, SCRATCH)).decode())
    assert samples["stockade_cloud_last_contact_timestamp_seconds"] == {}
    assert samples["stockade_cloud_seconds_since_contact"] == {}
    unknown = ScratchGauges(64 * MiB, 0, 500 * MiB, None)
    samples = parse(render(new_registry(), Snapshot(None, POOL, unknown)).decode())
    assert set(samples) == CLOUD_FAMILIES | OTHER_FAMILIES
    assert all(samples[f] == {} for f in CLOUD_FAMILIES)
    assert samples["stockade_scratch_high_water_bytes"] == {}
    assert value(samples, "stockade_pool_size_bytes") == 1000 * MiB


def test_each_server_has_its_own_registry() -> None:
    first, second = new_registry(), new_registry()
    up = cloud_status(*STATES["connected-active"])
    down = cloud_status(*STATES["lost-active"])
    one = parse(render(first, Snapshot(up, POOL, SCRATCH)).decode())
    two = parse(render(second, Snapshot(down, POOL, SCRATCH)).decode())
    assert value(one, "stockade_cloud_connected") == 1.0
    assert value(two, "stockade_cloud_connected") == 0.0
    assert not any(m.name.startswith("stockade_") for m in GLOBAL_REGISTRY.collect())
    # Outside a scrape the collector has nothing to say.
    assert (
        parse(render(first, Snapshot(None, POOL, SCRATCH)).decode())["stockade_cloud_connected"]
        == {}
    )


# --------------------------------------------------------------------- the real endpoint


@pytest.fixture
async def server(tmp_path: Path, catalog: Catalog, pools: PoolOpener) -> AsyncIterator[TestServer]:
    config = load_server_config(
        None,
        overrides={"server.data_dir": str(tmp_path / "data"), "scratch.min_bytes": str(8 * MiB)},
    )
    pool = await pools.create("metrics-pool")
    ctx = ServerContext(
        config=config,
        catalog=catalog,
        pool=pool,
        operator_token=TOKEN,
        ca_pem=b"",
        mqtt_url="mqtt://127.0.0.1:1",
        server_url="http://127.0.0.1:1",
    )
    srv = TestServer(make_app(ctx), host="127.0.0.1")
    async with srv:
        yield srv


async def _get(srv: TestServer, path: str, token: str | None = None) -> tuple[int, str, str]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(srv.make_url(path), headers=headers) as resp,
    ):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def test_metrics_endpoint_needs_no_token(
    server: TestServer, catalog: Catalog, tmp_path: Path
) -> None:
    scratch = tmp_path / "data" / "scratch"
    scratch.mkdir(parents=True)
    (scratch / "a.pack").write_bytes(b"x" * 8192)
    job = await catalog.create_server_job(JobKind.ONLINE_BACKUP, {})
    await catalog.transition_job(job.id, JobState.RUNNING)
    await catalog.transition_job(
        job.id, JobState.SUCCEEDED, result={"scratch_high_water": 5 * MiB, "scratch_bound": 8 * MiB}
    )
    status, ctype, text = await _get(server, "/metrics")
    assert status == 200, text
    assert ctype == CONTENT_TYPE_LATEST
    samples = parse(text)
    assert set(samples) == CLOUD_FAMILIES | OTHER_FAMILIES
    assert all(samples[f] == {} for f in CLOUD_FAMILIES)  # no monitor in this context
    size = value(samples, "stockade_pool_size_bytes")
    free = value(samples, "stockade_pool_free_bytes")
    assert size is not None and free is not None and 0 < free <= size
    assert value(samples, "stockade_scratch_bound_bytes") == 8 * MiB  # the floor: nothing protected
    used = value(samples, "stockade_scratch_used_bytes")
    assert used is not None and used >= 8192
    capacity = value(samples, "stockade_scratch_capacity_bytes")
    assert capacity is not None and capacity >= used
    assert value(samples, "stockade_scratch_high_water_bytes") == 5 * MiB


async def test_connection_routes_without_a_monitor_are_503(
    server: TestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, _ = await _get(server, "/api/v1/cloud/connection")
    assert status == 401
    status, _, text = await _get(server, "/api/v1/cloud/connection", TOKEN)
    assert status == 503
    assert NOT_RUNNING in text
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            server.make_url("/api/v1/cloud/connection/probe"),
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as resp,
    ):
        assert resp.status == 503
        assert (await resp.json()) == {"error": NOT_RUNNING}
    # The CLI's usual path for a 503: "not ready", exit 3. It is synchronous, so it runs
    # in a worker thread while this loop serves it.
    url = str(server.make_url("")).rstrip("/")
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["Get-CloudConnection", "-Server", url, "-Token", TOKEN])
    captured = capsys.readouterr()
    assert (code, captured.out) == (3, "")
    assert captured.err == f"stockade: Get-CloudConnection: {url} is not ready ({NOT_RUNNING})\n"
