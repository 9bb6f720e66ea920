"""The cloud connection table of shared/DESIGN.md, row by row, under real conditions.

The in-process server on a fake clock (SimServer) with a real agent and an Azure vault on
a real Azurite, registered through the REST API with an account SAS. Each state is made
the way it happens in the field, never by setting a flag:

- connected + active: Azurite running, a probe succeeds;
- lost + active: Azurite stopped (a probe fails with reason tcp: disconnected), then the
  server's clock moved past ``cloud.lost_after_days`` and probed again;
- connected + expired: a SAS that really expires (Azurite checks it in real time), two
  probes rejected (``cloud.rejections_to_change_state``, 2 by default);
- lost + expired: from there, Azurite stopped and the clock moved;
- connected + deprovisioned: the container deleted with the SDK, two probes;
- lost + deprovisioned: from there, Azurite stopped and the clock moved.

In every row the four operations are attempted like an operator does: Start-Backup,
Start-Backup -Online and Start-Restore through the CLI, the restore from cloud through
its REST call (the CLI first looks the RP up in the online listing, which no longer names
the copies of a deprovisioned vault). An allowed one is accepted (it may then fail for
want of the cloud, never for the policy); a refused one answers 409 / exit 1 naming the
connectivity and the vault state, and leaves no job and no RP behind. Get-CloudConnection
(plain and -Detailed) and /metrics say the same in every row.

The "connected" rows of the table show as ``disconnected`` in the expired and
deprovisioned states: the probes that found those states failed, while the last success
is recent (server/cloud_status.py; the policy treats both alike).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from server.catalog import JobState
from server.cloud_status import Operation
from server.ids import DataSourceId
from storage_pool.vault.header import VaultState
from tests.integration.sim.cloud_policy_fixture import (
    delete_container,
    detailed_fields,
    detailed_operations,
    labelled,
    register_sas,
    scrape,
    whole_seconds_from_now,
)
from tests.support.azurite import PersistentAzurite
from tests.support.sim import SimServer

DAY: Final = 86400.0
LOST_AFTER_DAYS: Final = 15
PAST_LOST: Final = LOST_AFTER_DAYS * DAY + 3600.0
LONG_SAS_SECONDS: Final = DAY
# Real seconds a short SAS lives: time for New-Vault and Register-Vault with it (about
# half a second here), then the test waits for it to run out.
SHORT_SAS_SECONDS: Final = 3.0
POLL: Final = 0.01

# No loop ticks on its own during the test (schedules, maintenance, periodic probes all
# wait an hour of real time): every job and probe here is one the test asked for.
SETTINGS: Final = {
    "scheduler.timezone": "UTC",
    "scheduler.tick_seconds": "3600",
    "scheduler.maintenance_interval_minutes": "10080",
    "scratch.min_bytes": str(8 << 20),
    "online.pack_mib": "1",
    "cloud.lost_after_days": str(LOST_AFTER_DAYS),
    "cloud.rejections_to_change_state": "2",
}

ALLOWED: Final = True
STOPPED: Final = False
CONNECTED: Final = "connected"
LOST: Final = "lost > 15 days"
ACTIVE, EXPIRED, DEPROVISIONED = VaultState.ACTIVE, VaultState.EXPIRED, VaultState.DEPROVISIONED


@dataclass(frozen=True)
class TableRow:
    connectivity: str  # the table's words: "connected" or "lost > 15 days"
    vault: VaultState
    backup_to_cloud: bool
    backup_to_disk: bool
    restore_from_cloud: bool
    restore_from_disk: bool

    def allows(self, op: Operation) -> bool:
        allowed: bool = getattr(self, op.value)
        return allowed

    @property
    def shown(self) -> str:
        """The monitor's connectivity in this row as this test reaches it (module doc)."""
        if self.connectivity == LOST:
            return "lost"
        return "connected" if self.vault is ACTIVE else "disconnected"

    @property
    def connected(self) -> bool:
        """What Get-CloudConnection prints."""
        return self.connectivity == CONNECTED and self.vault is ACTIVE


# shared/DESIGN.md, "Cloud connection states", in its row and column order.
# fmt: off
TABLE: Final = (
    #         connectivity vault          to cloud to disk  from cloud from disk
    TableRow(CONNECTED,    ACTIVE,        ALLOWED, ALLOWED, ALLOWED,   ALLOWED),
    TableRow(CONNECTED,    EXPIRED,       STOPPED, STOPPED, ALLOWED,   ALLOWED),
    TableRow(CONNECTED,    DEPROVISIONED, STOPPED, STOPPED, STOPPED,   STOPPED),
    TableRow(LOST,         ACTIVE,        STOPPED, STOPPED, ALLOWED,   ALLOWED),
    TableRow(LOST,         EXPIRED,       STOPPED, STOPPED, ALLOWED,   ALLOWED),
    TableRow(LOST,         DEPROVISIONED, STOPPED, STOPPED, STOPPED,   STOPPED),
)
# fmt: on


def row(connectivity: str, vault: VaultState) -> TableRow:
    (found,) = (r for r in TABLE if (r.connectivity, r.vault) == (connectivity, vault))
    return found


# -- the protected server -------------------------------------------------------------------


@dataclass
class Protected:
    """A server with a registered Azure vault, one agent and one data source in an online
    protection group, with one disk RP and its online copy."""

    sim: SimServer
    azurite: PersistentAzurite
    container: str
    ds_id: DataSourceId
    disk_rp: str
    online_rp: str
    base: Path
    restores: int = 0

    def restore_target(self) -> str:
        self.restores += 1
        return str(self.base / "restores" / str(self.restores))


@asynccontextmanager
async def protected(base: Path) -> AsyncIterator[Protected]:
    azurite = PersistentAzurite(base / "azurite")
    await azurite.start()
    try:
        async with SimServer(base / "sim", settings=SETTINGS) as sim:
            container = f"p{uuid.uuid4().hex[:20]}"
            await register_sas(sim, azurite, container, whole_seconds_from_now(LONG_SAS_SECONDS))
            data = base / "data"
            data.mkdir()
            for i in range(3):
                (data / f"f{i}.bin").write_bytes(os.urandom(64 << 10))
            await sim.add_agent("web")
            ds = await sim.add_data_source("web", [data], name="data")
            await sim.api_ok(
                "POST",
                "/protection-groups",
                {
                    "name": "protected",
                    "disk": {"sync_frequency_minutes": 240, "retention_days": 5},
                    "online": {"enabled": True, "times": ["21:00"]},
                    "members": [ds["id"]],
                },
            )
            disk = await sim.backup(ds["id"])
            assert disk.state is JobState.SUCCEEDED, disk.error
            assert disk.result is not None
            online = await sim.api_ok(
                "POST", "/jobs/backup", {"data_source": ds["id"], "online": True}
            )
            copied = await sim.wait_job(online["id"])
            assert copied.state is JobState.SUCCEEDED, copied.error
            (orp,) = await sim.catalog.list_online_rps(DataSourceId(ds["id"]))
            disk_rp: str = disk.result["rp_id"]
            assert orp.disk_rp_id == disk_rp
            yield Protected(sim, azurite, container, DataSourceId(ds["id"]), disk_rp, orp.id, base)
    finally:
        await azurite.stop()
        azurite.close_log()


async def probe(p: Protected) -> dict[str, Any]:
    """Get-CloudConnection -Probe's REST call; the status after it."""
    doc: dict[str, Any] = await p.sim.api_ok("POST", "/cloud/connection/probe")
    return doc


def state_of(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["connectivity"], doc["vault_state"]


# -- one row of the table -------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    jobs: int
    disk_rps: int
    online_rps: int


async def counts(p: Protected) -> Counts:
    catalog = p.sim.catalog
    return Counts(
        len(await catalog.list_jobs(limit=100_000)),
        len(await catalog.list_recovery_points()),
        len(await catalog.list_online_rps(include_deleted=True)),
    )


@dataclass(frozen=True)
class Attempt:
    job_id: str | None  # the accepted job
    refusal: str  # the 409's or the CLI's error text when refused


def job_of(out: str) -> str:
    doc = json.loads(out)
    job = doc[0] if isinstance(doc, list) else doc
    job_id: str = job["id"]
    return job_id


async def newest_online_rp(p: Protected) -> str:
    """The online RP to restore: the newest live copy (an online backup of a newer disk RP
    may have retired older copies of the same day, by the GFS rule); once the vault is gone
    and every copy is marked deleted, the one made at setup."""
    live = await p.sim.catalog.list_online_rps(p.ds_id)
    return live[0].id if live else p.online_rp


async def cli_attempt(p: Protected, *args: str) -> Attempt:
    res = await p.sim.cli(*args, "-Json")
    if res.code == 0:
        return Attempt(job_of(res.out), "")
    assert res.code == 1, (args, res.code, res.out, res.err)
    return Attempt(None, res.err)


async def attempt(p: Protected, op: Operation) -> Attempt:
    if op is Operation.BACKUP_TO_DISK:
        return await cli_attempt(p, "Start-Backup", "-DataSource", p.ds_id)
    if op is Operation.BACKUP_TO_CLOUD:
        return await cli_attempt(p, "Start-Backup", "-DataSource", p.ds_id, "-Online")
    target = p.restore_target()
    if op is Operation.RESTORE_FROM_DISK:
        return await cli_attempt(
            p, "Start-Restore", "-RecoveryPoint", p.disk_rp, "-TargetPath", target, "-Overwrite"
        )
    # Once the vault is deprovisioned the catalog no longer lists its copies, so the CLI
    # asks the vault (source=vault), which the policy refuses as a restore from cloud.
    return await cli_attempt(
        p,
        "Start-Restore",
        "-FromCloud",
        "-RecoveryPoint",
        await newest_online_rp(p),
        "-TargetPath",
        target,
        "-Overwrite",
    )


async def check_row(
    p: Protected, r: TableRow, *, succeed: Collection[Operation]
) -> dict[Operation, str]:
    """Get-CloudConnection, /metrics, then each operation as `r` says. Accepted jobs in
    `succeed` are waited for and must succeed; the others' ids are returned (they may still
    run, or fail for want of the cloud, not for the policy)."""
    status = await p.sim.api_ok("GET", "/cloud/connection")
    assert state_of(status) == (r.shown, r.vault.value), status
    await check_cli(p, r)
    await check_metrics(p, r)
    # The RPs of this row are newer than the last row's (the fake clock stands still).
    p.sim.clock.advance(60)
    pending: dict[Operation, str] = {}
    order = (
        Operation.BACKUP_TO_DISK,
        Operation.BACKUP_TO_CLOUD,
        Operation.RESTORE_FROM_DISK,
        Operation.RESTORE_FROM_CLOUD,
    )
    for op in order:
        before = await counts(p)
        tried = await attempt(p, op)
        if not r.allows(op):
            assert tried.job_id is None, (r, op, "accepted")
            expected = (
                f"{op.label} stopped by the cloud policy: "
                f"connectivity {r.shown}, vault {r.vault.value}"
            )
            assert expected in tried.refusal, (r, op, tried.refusal)
            assert await counts(p) == before, (r, op)
            continue
        assert tried.job_id is not None, (r, op, tried.refusal)
        if op in succeed:
            done = await p.sim.wait_job(tried.job_id)
            assert done.state is JobState.SUCCEEDED, (r, op, done.error)
        else:
            job = await p.sim.catalog.get_job(tried.job_id)
            assert "cloud policy" not in (job.error or ""), (r, op, job.error)
            pending[op] = tried.job_id
    return pending


async def check_cli(p: Protected, r: TableRow) -> None:
    plain = await p.sim.cli("Get-CloudConnection")
    assert (plain.code, plain.out) == ((0, "True\n") if r.connected else (1, "False\n")), (
        r,
        plain.out,
        plain.err,
    )
    detailed = await p.sim.cli("Get-CloudConnection", "-Detailed")
    assert detailed.code == plain.code, detailed.err
    f = detailed_fields(detailed)
    assert (f["Connected"], f["Connectivity"], f["VaultState"]) == (
        str(r.connected),
        r.shown,
        r.vault.value,
    ), detailed.out
    assert detailed_operations(detailed) == {
        op.label: "allowed" if r.allows(op) else "stopped" for op in Operation
    }, detailed.out


async def check_metrics(p: Protected, r: TableRow) -> None:
    m = await scrape(p.sim)
    assert m["stockade_cloud_connected"] == {(): 1.0 if r.connected else 0.0}
    connectivity = labelled(m["stockade_cloud_connectivity"], "state")
    assert {k for k, v in connectivity.items() if v == 1.0} == {r.shown}, connectivity
    assert labelled(m["stockade_vault_state"], "state") == {
        s.value: 1.0 if s is r.vault else 0.0 for s in VaultState
    }
    assert labelled(m["stockade_cloud_operation_allowed"], "operation") == {
        op.value: 1.0 if r.allows(op) else 0.0 for op in Operation
    }


async def get_cloud_connection_true(p: Protected) -> None:
    res = await p.sim.cli("Get-CloudConnection")
    assert (res.code, res.out) == (0, "True\n"), res.err


def not_by_policy(job: Any) -> None:
    """An allowed job that ended: succeeded, or failed for want of the cloud."""
    assert job.state.is_final, job
    assert job.state is JobState.SUCCEEDED or "cloud policy" not in (job.error or ""), job.error


async def go_lost(p: Protected) -> dict[str, Any]:
    """Azurite stopped: disconnected (tcp), nothing stopped yet; then the clock moves past
    `cloud.lost_after_days` and the next probe says lost."""
    await p.azurite.stop()
    down = await probe(p)
    assert down["connectivity"] == "disconnected" and down["last_reason"] == "tcp", down
    before = down["vault_state"]
    p.sim.clock.advance(PAST_LOST)
    lost = await probe(p)
    assert state_of(lost) == ("lost", before), lost
    assert lost["since_contact_seconds"] > LOST_AFTER_DAYS * DAY, lost
    return down


# -- the tests --------------------------------------------------------------------------------


async def test_active_and_expired_rows_then_recovery(tmp_path: Path) -> None:
    async with protected(tmp_path) as p:
        assert state_of(await probe(p)) == ("connected", "active")
        await check_row(p, row(CONNECTED, ACTIVE), succeed=set(Operation))

        # Azurite down: disconnected follows the connected row (everything still allowed).
        down = await go_lost(p)
        assert all(d["allowed"] for d in down["operations"].values()), down
        lost_active = await check_row(p, row(LOST, ACTIVE), succeed={Operation.RESTORE_FROM_DISK})
        # The cloud comes back: connected and active again, and the restore from the
        # cloud accepted while it was out of reach goes on.
        await p.azurite.start()
        back = await probe(p)
        assert state_of(back) == ("connected", "active"), back
        await get_cloud_connection_true(p)
        not_by_policy(await p.sim.wait_job(lost_active[Operation.RESTORE_FROM_CLOUD]))

        # A credential that really expires: registered while valid, then rejected twice.
        p.sim.clock.advance(60)
        expiry = whole_seconds_from_now(SHORT_SAS_SECONDS)
        await register_sas(p.sim, p.azurite, p.container, expiry)
        await asyncio.sleep(max(0.0, expiry.timestamp() - time.time()) + 1.0)
        await probe(p)
        expired = await probe(p)
        assert state_of(expired) == ("disconnected", "expired"), expired
        assert expired["last_reason"] == "authentication", expired
        connected_expired = await check_row(
            p, row(CONNECTED, EXPIRED), succeed={Operation.RESTORE_FROM_DISK}
        )
        rejected = await p.sim.wait_job(connected_expired[Operation.RESTORE_FROM_CLOUD])
        not_by_policy(rejected)
        assert rejected.state is JobState.FAILED, rejected  # the vault refuses the SAS

        await go_lost(p)
        lost_expired = await check_row(p, row(LOST, EXPIRED), succeed={Operation.RESTORE_FROM_DISK})
        await p.azurite.start()
        not_by_policy(await p.sim.wait_job(lost_expired[Operation.RESTORE_FROM_CLOUD]))

        # A fresh credential registered: active again.
        p.sim.clock.advance(60)
        await register_sas(p.sim, p.azurite, p.container, whole_seconds_from_now(LONG_SAS_SECONDS))
        assert state_of(await probe(p)) == ("connected", "active")
        await get_cloud_connection_true(p)


async def test_deprovisioned_rows_stop_a_running_backup(tmp_path: Path) -> None:
    async with protected(tmp_path) as p:
        assert state_of(await probe(p)) == ("connected", "active")
        big = tmp_path / "big"
        big.mkdir()
        for i in range(8):
            (big / f"b{i}.bin").write_bytes(os.urandom(8 << 20))
        ds = await p.sim.add_data_source("web", [big], name="big")
        started = await p.sim.cli("Start-Backup", "-DataSource", ds["id"], "-Json")
        assert started.code == 0, started.err
        job_id = job_of(started.out)

        # The agent (a real process) stopped with SIGSTOP once it has accepted the backup, so
        # the backup is still running when the container goes, whatever the machine's speed;
        # told to cancel, it ends the job on its side once it runs again.
        async with paused_once_running(p, job_id):
            await delete_container(p.azurite, p.container)
            first = await probe(p)
            assert state_of(first) == ("disconnected", "active"), first
            assert first["last_reason"] == "not_found", first
            gone = await probe(p)
            assert state_of(gone) == ("disconnected", "deprovisioned"), gone
            stopped = await p.sim.catalog.get_job(job_id)
            assert stopped.state is JobState.FAILED, stopped
            assert stopped.error is not None and stopped.error.startswith(
                "backup to disk stopped by the cloud policy: "
                "connectivity disconnected, vault deprovisioned"
            ), stopped.error
        await agent_done_with(p, job_id)
        assert (await p.sim.catalog.get_job(job_id)).error == stopped.error
        assert await p.sim.catalog.list_recovery_points(DataSourceId(ds["id"])) == []

        # The vault is gone, and so are its online RPs.
        assert await p.sim.catalog.list_online_rps() == []
        deleted = await p.sim.catalog.list_online_rps(include_deleted=True)
        assert [r.id for r in deleted] == [p.online_rp]
        assert await p.sim.api_ok("GET", f"/recovery-points?tier=cloud&data_source={p.ds_id}") == []

        assert await check_row(p, row(CONNECTED, DEPROVISIONED), succeed=()) == {}
        await go_lost(p)
        assert await check_row(p, row(LOST, DEPROVISIONED), succeed=()) == {}


@asynccontextmanager
async def paused_once_running(p: Protected, job_id: str) -> AsyncIterator[None]:
    """The agent process stopped (SIGSTOP) as soon as it runs `job_id`, until the end."""
    proc = p.sim.agents["web"].proc
    assert proc is not None
    deadline = time.monotonic() + 60
    while (await p.sim.catalog.get_job(job_id)).state is JobState.QUEUED:
        assert time.monotonic() < deadline, "the backup never started"
        await asyncio.sleep(POLL)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        job = await p.sim.catalog.get_job(job_id)
        assert job.state is JobState.RUNNING, (job.state, job.error)
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


async def agent_done_with(p: Protected, job_id: str, within: float = 60.0) -> None:
    """Until the agent's own job ledger records `job_id` as ended (it was told to cancel)."""
    ledger = p.sim.agents["web"].state_dir / "jobs.json"
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        doc = json.loads(ledger.read_text()) if ledger.exists() else {"jobs": {}}
        record = doc["jobs"].get(job_id)
        if record is not None and record["state"] != "running":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the agent did not end job {job_id} in {within} s")
