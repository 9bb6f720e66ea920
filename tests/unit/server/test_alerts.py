"""AlertCenter: idempotent open/resolve in the catalog, and the webhook (a real aiohttp
receiver on a free port; a dead one must neither block nor raise)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from server.alerts import FAILED_JOB, POOL_USAGE, AlertCenter
from server.catalog import AlertSeverity, Catalog
from tests.support.mqtt import free_port
from tests.unit.server.catalog_fixture import T0, FakeClock


@dataclass
class Receiver:
    """A webhook endpoint that records what it gets; `hold` makes it answer only later,
    `status` is what it answers."""

    url: str = ""
    got: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    hold: asyncio.Event | None = None
    status: int = 204

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.got.append(body)
        await self.arrived.put(body)
        if self.hold is not None:
            await self.hold.wait()
        return web.Response(status=self.status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    rec.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield rec
    finally:
        if rec.hold is not None:
            rec.hold.set()
        await runner.cleanup()


async def test_opened_and_resolved_reach_the_webhook_once_each(
    catalog: Catalog, receiver: Receiver, clock: FakeClock
) -> None:
    center = AlertCenter(catalog, lambda: receiver.url, backoff_seconds=0.01)
    try:
        with capture_logs() as logs:
            await center.open(FAILED_JOB, "ds-1", "backup failed", details={"job_id": "j1"})
            await center.open(FAILED_JOB, "ds-1", "failed again", severity="critical")
            clock.now = T0 + 5
            await center.resolve(FAILED_JOB, "ds-1")
            await center.resolve(FAILED_JOB, "ds-1")
            opened = await receiver.arrived.get()
            resolved = await receiver.arrived.get()
    finally:
        await center.close()
    assert opened["event"] == "opened"
    assert {k: opened["alert"][k] for k in ("kind", "subject", "severity", "message")} == {
        "kind": "failed_job",
        "subject": "ds-1",
        "severity": "error",
        "message": "backup failed",
    }
    assert opened["alert"]["details"] == {"job_id": "j1"}
    assert resolved["event"] == "resolved"
    assert resolved["alert"]["id"] == opened["alert"]["id"]
    assert resolved["alert"]["resolved_at"] == T0 + 5
    assert resolved["alert"]["message"] == "failed again"  # the update is in the catalog
    assert len(receiver.got) == 2  # the second open and the second resolve sent nothing
    events = [e["event"] for e in logs]
    assert events.count("alert_opened") == 1
    assert events.count("alert_resolved") == 1
    assert await catalog.list_alerts() == []


async def test_a_slow_webhook_does_not_hold_up_the_caller(
    catalog: Catalog, receiver: Receiver
) -> None:
    receiver.hold = asyncio.Event()
    center = AlertCenter(catalog, lambda: receiver.url)
    try:
        await center.open(POOL_USAGE, "/pool", "pool 85% full", severity="warning")
        await receiver.arrived.get()
        # The receiver holds its answer, yet the caller goes on and the catalog has it.
        await center.resolve(POOL_USAGE, "/pool")
        assert await catalog.list_alerts() == []
        receiver.hold.set()
        assert (await receiver.arrived.get())["event"] == "resolved"
    finally:
        await center.close()


async def test_a_dead_webhook_is_retried_then_given_up_without_raising(
    catalog: Catalog,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    center = AlertCenter(catalog, lambda: dead, attempts=3, backoff_seconds=0.01)
    with capture_logs() as logs:
        await center.open(FAILED_JOB, "ds-2", "backup failed")
        (alert,) = await catalog.list_alerts()
        assert alert.severity is AlertSeverity.ERROR
        await center.close(drain_seconds=30)
    failures = [e for e in logs if e["event"] == "alert_webhook_failed"]
    assert [f["attempt"] for f in failures] == [1, 2, 3]
    assert [f["giving_up"] for f in failures] == [False, False, True]


async def test_a_client_error_answer_is_not_retried(catalog: Catalog, receiver: Receiver) -> None:
    receiver.status = 400
    center = AlertCenter(catalog, lambda: receiver.url, attempts=3, backoff_seconds=0.01)
    with capture_logs() as logs:
        await center.open(FAILED_JOB, "ds-3", "backup failed")
        await center.close(drain_seconds=30)
    assert len(receiver.got) == 1
    failures = [e for e in logs if e["event"] == "alert_webhook_failed"]
    assert len(failures) == 1 and failures[0]["giving_up"] is True
    assert "HTTP 400" in failures[0]["error"]


async def test_without_a_webhook_alerts_are_only_stored(
    catalog: Catalog, receiver: Receiver
) -> None:
    url = ""
    center = AlertCenter(catalog, lambda: url)
    try:
        await center.open(FAILED_JOB, "ds-4", "backup failed")
        url = receiver.url  # a reload switches it on: the resolve goes out
        await center.resolve(FAILED_JOB, "ds-4")
        assert (await receiver.arrived.get())["event"] == "resolved"
    finally:
        await center.close()
    assert len(receiver.got) == 1


async def test_a_catalog_failure_is_logged_not_raised(catalog: Catalog) -> None:
    center = AlertCenter(catalog, lambda: "")
    await catalog.close()
    with capture_logs() as logs:
        await center.open(FAILED_JOB, "ds-5", "backup failed")
        await center.resolve(FAILED_JOB, "ds-5")
    await center.close()
    assert [e["event"] for e in logs] == ["alert_store_failed", "alert_store_failed"]
