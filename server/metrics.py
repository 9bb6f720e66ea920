"""``GET /metrics``: cloud connection, storage pool and scratch gauges in Prometheus format.

Each server has its own `CollectorRegistry` (never prometheus-client's global one, so two
servers in one process, as in the tests, never share series) holding one
`StockadeCollector`. A scrape first takes a `Snapshot` of the server (async: the pool's
statvfs and the scratch folder scan run in worker threads, the scratch bound comes from
the catalog, live scratch use from the online runner), then renders the registry; the
collector reads the snapshot of the scrape in progress from a context variable, so
concurrent scrapes never see each other's values and nothing blocking runs inside
``collect``.

Served without the operator token, like ``/api/v1/health`` (server/auth.py lists it in
PUBLIC): Prometheus scrapers usually have none. It carries only the gauges below: no
vault location, no names, no paths, no secrets.

Families (all gauges; a family with no known value has no sample):

- ``stockade_cloud_connected`` 1 when Get-CloudConnection says True;
- ``stockade_cloud_connectivity{state}`` one series per connectivity, 1 for the current;
- ``stockade_cloud_last_contact_timestamp_seconds`` last successful contact (none: never);
- ``stockade_cloud_seconds_since_contact`` by the server's clock (none: never);
- ``stockade_cloud_last_failure_timestamp_seconds``;
- ``stockade_vault_state{state}`` active|expired|deprovisioned, 1 for the current (all 0
  when no vault is registered);
- ``stockade_cloud_operation_allowed{operation}`` the policy's answer for each job kind;
- ``stockade_pool_size_bytes``, ``stockade_pool_used_bytes``, ``stockade_pool_free_bytes``,
  ``stockade_pool_reserve_bytes`` the pool's filesystem (server/capacity.py);
- ``stockade_scratch_bound_bytes`` the scratch bound (server/scratch_bound.py),
  ``stockade_scratch_used_bytes`` scratch bytes in use now: the running online backup's
  reservations (`OnlineBackupRunner.scratch_in_use`, fed by the job's `ScratchBudget`, which
  counts a pack before its file grows) or the pack files found in the scratch area
  (leftovers of a crash, when idle), whichever is more,
  ``stockade_scratch_capacity_bytes`` what the scratch area could hold,
  ``stockade_scratch_high_water_bytes`` most bytes the running online backup has held in
  scratch at once; when idle, the last job this process ran, else (after a restart) the
  newest successful online backup's, from its job result.

The cloud families are empty while the connectivity monitor is not running.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from server import __version__
from server.capacity import PoolCapacity, pool_capacity
from server.catalog import JobState
from server.catalog_rows import JobKind
from server.cloud_status import CloudStatus, Connectivity, decisions
from server.context import CTX_KEY, ServerContext
from server.scratch_bound import ScratchGuard, scratch_capacity
from storage_pool.vault.header import VaultState
from storage_pool.vault.scratch import scratch_usage

__all__ = [
    "METRICS_PATH",
    "REGISTRY_KEY",
    "ScratchGauges",
    "Snapshot",
    "StockadeCollector",
    "families",
    "metrics",
    "new_registry",
    "render",
    "routes",
    "take_snapshot",
]

METRICS_PATH: Final = "/metrics"
# How far back among succeeded jobs to look for the newest online backup's high-water mark.
_HIGH_WATER_JOBS: Final = 200


@dataclass(frozen=True, slots=True)
class ScratchGauges:
    bound_bytes: int
    used_bytes: int
    capacity_bytes: int
    high_water_bytes: int | None  # None: no successful online backup among recent jobs


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one scrape reports, read at the start of the scrape."""

    cloud: CloudStatus | None  # None: the connectivity monitor is not running
    pool: PoolCapacity
    scratch: ScratchGauges


_SCRAPE: contextvars.ContextVar[Snapshot | None] = contextvars.ContextVar(
    "stockade_metrics_scrape", default=None
)


def _gauge(name: str, doc: str, labels: Iterable[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=None if labels is None else list(labels))


def families(snap: Snapshot | None) -> list[Metric]:
    """The metric families, with samples from `snap` (none when `snap` is None)."""
    info = _gauge("stockade_build_info", "Stockade server version (always 1).", ["version"])
    connected = _gauge("stockade_cloud_connected", "1 when Get-CloudConnection says True.")
    connectivity = _gauge(
        "stockade_cloud_connectivity",
        "Connectivity to the vault: 1 for the current state.",
        ["state"],
    )
    last_contact = _gauge(
        "stockade_cloud_last_contact_timestamp_seconds",
        "Unix time of the last successful contact with the vault.",
    )
    since = _gauge(
        "stockade_cloud_seconds_since_contact",
        "Seconds since the last successful contact with the vault, by the server's clock.",
    )
    last_failure = _gauge(
        "stockade_cloud_last_failure_timestamp_seconds",
        "Unix time of the last failed contact with the vault.",
    )
    vault_state = _gauge(
        "stockade_vault_state",
        "Vault subscription state: 1 for the current state (all 0 when none is registered).",
        ["state"],
    )
    allowed = _gauge(
        "stockade_cloud_operation_allowed",
        "1 when the cloud policy allows the operation to start now.",
        ["operation"],
    )
    pool_size = _gauge("stockade_pool_size_bytes", "Size of the storage pool's filesystem.")
    pool_used = _gauge("stockade_pool_used_bytes", "Used bytes of the pool's filesystem.")
    pool_free = _gauge(
        "stockade_pool_free_bytes", "Free bytes of the pool's filesystem (unprivileged writer)."
    )
    pool_reserve = _gauge(
        "stockade_pool_reserve_bytes", "Free space under which new backups are refused."
    )
    scratch_bound = _gauge(
        "stockade_scratch_bound_bytes", "Most bytes online backups may stage in scratch."
    )
    scratch_used = _gauge(
        "stockade_scratch_used_bytes",
        "Scratch bytes in use now: the running online backup's, or leftover pack files.",
    )
    scratch_capacity_ = _gauge(
        "stockade_scratch_capacity_bytes",
        "Bytes the scratch area could hold: its free space plus its pack files.",
    )
    scratch_high = _gauge(
        "stockade_scratch_high_water_bytes",
        "Most scratch bytes the running (else the last) online backup held at once.",
    )
    out: list[Metric] = [
        info,
        connected,
        connectivity,
        last_contact,
        since,
        last_failure,
        vault_state,
        allowed,
        pool_size,
        pool_used,
        pool_free,
        pool_reserve,
        scratch_bound,
        scratch_used,
        scratch_capacity_,
        scratch_high,
    ]
    if snap is None:
        return out
    info.add_metric([__version__], 1)
    cloud = snap.cloud
    if cloud is not None:
        connected.add_metric([], float(cloud.connected))
        for state in Connectivity:
            connectivity.add_metric([state.value], float(cloud.connectivity is state))
        if cloud.last_success is not None:
            last_contact.add_metric([], cloud.last_success)
        if cloud.since_contact_seconds is not None:
            since.add_metric([], cloud.since_contact_seconds)
        if cloud.last_failure is not None:
            last_failure.add_metric([], cloud.last_failure)
        for vault in VaultState:
            vault_state.add_metric([vault.value], float(cloud.vault_state is vault))
        for op, decision in decisions(cloud).items():
            allowed.add_metric([op.value], float(decision.allowed))
    pool = snap.pool
    pool_size.add_metric([], pool.total_bytes)
    pool_used.add_metric([], pool.used_bytes)
    pool_free.add_metric([], pool.free_bytes)
    pool_reserve.add_metric([], pool.reserve_bytes)
    scratch = snap.scratch
    scratch_bound.add_metric([], scratch.bound_bytes)
    scratch_used.add_metric([], scratch.used_bytes)
    scratch_capacity_.add_metric([], scratch.capacity_bytes)
    if scratch.high_water_bytes is not None:
        scratch_high.add_metric([], scratch.high_water_bytes)
    return out


class StockadeCollector:
    """A prometheus-client collector: the families of the scrape in progress."""

    def describe(self) -> Iterable[Metric]:
        # The registry checks names for clashes at register time, outside any scrape.
        return families(None)

    def collect(self) -> Iterable[Metric]:
        snap = _SCRAPE.get()
        return [] if snap is None else families(snap)


def new_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StockadeCollector())
    return registry


def render(registry: CollectorRegistry, snap: Snapshot) -> bytes:
    """The Prometheus text of `registry` with `snap` as this scrape's values."""
    token = _SCRAPE.set(snap)
    try:
        return generate_latest(registry)
    finally:
        _SCRAPE.reset(token)


async def _high_water(ctx: ServerContext) -> int | None:
    jobs = await ctx.catalog.list_jobs(state=JobState.SUCCEEDED, limit=_HIGH_WATER_JOBS)
    for job in jobs:
        if job.kind is JobKind.ONLINE_BACKUP and job.result is not None:
            value = job.result.get("scratch_high_water")
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def _scratch_sizes(scratch_dir: Path) -> tuple[int, int]:
    """(pack bytes in the scratch area, what it could hold) (blocking)."""
    capacity = scratch_capacity(scratch_dir)  # first: it creates a missing scratch dir
    return scratch_usage(scratch_dir), capacity


async def take_snapshot(ctx: ServerContext) -> Snapshot:
    guard = ctx.online.scratch if ctx.online is not None else None
    if guard is None:
        guard = ScratchGuard(ctx.catalog, None, lambda: ctx.config)
    scratch_dir = ctx.config.scratch_path
    cloud = ctx.cloud.status() if ctx.cloud is not None else None
    live, live_high = ctx.online.scratch_in_use() if ctx.online is not None else (0, None)
    pool, (_protected, bound), (found, capacity) = await asyncio.gather(
        pool_capacity(ctx.pool.root, ctx.config.pool),
        guard.bound(),
        asyncio.to_thread(_scratch_sizes, scratch_dir),
    )
    high_water = live_high if live_high is not None else await _high_water(ctx)
    gauges = ScratchGauges(bound, max(live, found), capacity, high_water)
    return Snapshot(cloud, pool, gauges)


REGISTRY_KEY: Final = web.AppKey("stockade_metrics_registry", CollectorRegistry)


async def metrics(request: web.Request) -> web.Response:
    snap = await take_snapshot(request.app[CTX_KEY])
    body = render(request.app[REGISTRY_KEY], snap)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def routes() -> list[web.RouteDef]:
    return [web.get(METRICS_PATH, metrics)]
