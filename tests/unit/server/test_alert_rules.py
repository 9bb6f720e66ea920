"""The alert rules against a real catalog and a real directory, with a fake clock: each
alert opens when its cause appears and resolves itself when the cause clears."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.alert_rules import AlertRules
from server.alerts import AGENT_OFFLINE, FAILED_JOB, POOL_RESERVE, POOL_USAGE, AlertCenter
from server.capacity import pool_capacity_sync
from server.catalog import AlertRow, Catalog, DataSourceRow, JobKind, JobState
from server.config import AlertsSettings, PoolSettings, ServerConfig
from server.ids import JobId
from tests.unit.server.catalog_fixture import T0, FakeClock

MINUTE = 60.0


@dataclasses.dataclass
class Setup:
    """The rules under test and the config they read (tests replace it, as a reload does)."""

    config: ServerConfig
    rules: AlertRules | None = None

    def __call__(self) -> ServerConfig:
        return self.config

    async def evaluate(self) -> None:
        assert self.rules is not None
        await self.rules.evaluate_once()


@pytest.fixture
async def setup(catalog: Catalog, clock: FakeClock, tmp_path: Path) -> AsyncIterator[Setup]:
    alerts = AlertCenter(catalog, lambda: "")
    holder = Setup(
        ServerConfig(
            # No reserve and thresholds no disk reaches: only the rule under test fires.
            pool=PoolSettings(reserve_bytes=0, reserve_percent=0),
            alerts=AlertsSettings(
                agent_offline_minutes=60, pool_warning_percent=100, pool_critical_percent=100
            ),
        )
    )
    holder.rules = AlertRules(catalog, alerts, tmp_path, holder, clock)
    try:
        yield holder
    finally:
        await alerts.close()


@pytest.fixture
async def source(catalog: Catalog) -> DataSourceRow:
    token, _ = await catalog.create_agent_token(600)
    agent, _, _ = await catalog.register_agent(token, None, "web01")
    return await catalog.add_data_source(agent.id, None, ["/srv"])


async def _open(catalog: Catalog, kind: str) -> dict[str, AlertRow]:
    return {a.subject: a for a in await catalog.open_alerts_of_kind(kind)}


async def _job(
    catalog: Catalog,
    ds: DataSourceRow,
    state: JobState,
    kind: JobKind = JobKind.BACKUP,
    rp_id: str = "rp-1",
) -> JobId:
    job = await catalog.create_job(kind, ds.agent_id, ds.id, {"rp_id": rp_id})
    if state is not JobState.CANCELLED:
        await catalog.transition_job(job.id, JobState.RUNNING)
    await catalog.transition_job(job.id, state, error="disk on fire")
    return job.id


async def test_a_failed_backup_alerts_until_a_later_success(
    catalog: Catalog, setup: Setup, source: DataSourceRow, clock: FakeClock
) -> None:
    await _job(catalog, source, JobState.SUCCEEDED)
    await setup.evaluate()
    assert await _open(catalog, FAILED_JOB) == {}
    clock.now += MINUTE
    failed = await _job(catalog, source, JobState.FAILED)
    await setup.evaluate()
    alert = (await _open(catalog, FAILED_JOB))[source.id]
    assert alert.message == f"the last backup of web01:/srv failed (job {failed}): disk on fire"
    assert alert.details["job_id"] == failed
    clock.now += MINUTE
    await setup.evaluate()  # nothing new: the alert is not touched
    assert (await _open(catalog, FAILED_JOB))[source.id].updated_at == alert.updated_at
    clock.now += MINUTE
    await _job(catalog, source, JobState.CANCELLED)  # says nothing about health
    await setup.evaluate()
    assert source.id in await _open(catalog, FAILED_JOB)
    clock.now += MINUTE
    await _job(catalog, source, JobState.SUCCEEDED_WITH_WARNINGS)
    await setup.evaluate()
    assert await _open(catalog, FAILED_JOB) == {}
    (resolved,) = await catalog.list_alerts(include_resolved=True)
    assert resolved.id == alert.id and resolved.resolved_at == clock.now


async def test_removing_a_failing_data_source_resolves_its_alert(
    catalog: Catalog, setup: Setup, source: DataSourceRow
) -> None:
    await _job(catalog, source, JobState.FAILED)
    await setup.evaluate()
    assert source.id in await _open(catalog, FAILED_JOB)
    await catalog.remove_data_source(source.id)
    await setup.evaluate()
    assert await _open(catalog, FAILED_JOB) == {}


async def test_a_failed_restore_alerts_until_that_rp_restores(
    catalog: Catalog, setup: Setup, source: DataSourceRow, clock: FakeClock
) -> None:
    failed = await _job(catalog, source, JobState.FAILED, JobKind.RESTORE, "rp-a")
    await setup.evaluate()
    alert = (await _open(catalog, FAILED_JOB))[failed]
    assert alert.message == f"restore job {failed} of recovery point rp-a failed: disk on fire"
    clock.now += MINUTE
    await _job(catalog, source, JobState.SUCCEEDED, JobKind.RESTORE, "rp-other")
    await setup.evaluate()
    assert failed in await _open(catalog, FAILED_JOB)  # another RP proves nothing
    clock.now += MINUTE
    await _job(catalog, source, JobState.SUCCEEDED, JobKind.RESTORE, "rp-a")
    await setup.evaluate()
    assert await _open(catalog, FAILED_JOB) == {}


async def test_an_agent_offline_past_the_threshold_alerts_until_it_returns(
    catalog: Catalog, setup: Setup, source: DataSourceRow, clock: FakeClock
) -> None:
    agent_id = source.agent_id
    await catalog.set_agent_presence(agent_id, True, T0)
    await catalog.set_agent_presence(agent_id, False, T0 + 10)
    clock.now = T0 + 10 + 60 * MINUTE
    await setup.evaluate()
    assert await _open(catalog, AGENT_OFFLINE) == {}  # exactly at the threshold: not yet
    clock.now += 1
    await setup.evaluate()
    alert = (await _open(catalog, AGENT_OFFLINE))[agent_id]
    assert alert.message == (
        "agent web01 has been offline since 2023-11-14 22:13:30Z (alert after 60 min)"
    )
    await catalog.set_agent_presence(agent_id, True, clock.now)
    await setup.evaluate()
    assert await _open(catalog, AGENT_OFFLINE) == {}
    # A reload that shortens the threshold applies at the next evaluation.
    await catalog.set_agent_presence(agent_id, False, clock.now)
    clock.now += 2 * MINUTE
    await setup.evaluate()
    assert await _open(catalog, AGENT_OFFLINE) == {}
    setup.config = dataclasses.replace(
        setup.config, alerts=dataclasses.replace(setup.config.alerts, agent_offline_minutes=1)
    )
    await setup.evaluate()
    assert agent_id in await _open(catalog, AGENT_OFFLINE)
    await catalog.remove_agent(agent_id)
    await setup.evaluate()
    assert await _open(catalog, AGENT_OFFLINE) == {}


async def test_an_agent_that_never_connected_counts_from_its_registration(
    catalog: Catalog, setup: Setup, source: DataSourceRow, clock: FakeClock
) -> None:
    clock.now = T0 + 61 * MINUTE
    await setup.evaluate()
    assert source.agent_id in await _open(catalog, AGENT_OFFLINE)


async def test_pool_usage_warning_then_critical_then_resolved(
    catalog: Catalog, setup: Setup, tmp_path: Path
) -> None:
    used = pool_capacity_sync(tmp_path, setup.config.pool).used_percent
    if used < 1:
        pytest.skip(f"the filesystem of {tmp_path} is under 1% used")
    at = int(used)  # at or under the real usage, whatever else writes meanwhile

    def thresholds(warning: int, critical: int) -> None:
        setup.config = dataclasses.replace(
            setup.config,
            alerts=dataclasses.replace(
                setup.config.alerts, pool_warning_percent=warning, pool_critical_percent=critical
            ),
        )

    subject = str(tmp_path)
    thresholds(at, 100)
    await setup.evaluate()
    warning = (await _open(catalog, POOL_USAGE))[subject]
    assert warning.severity.value == "warning"
    assert warning.message.startswith(f"storage pool {subject} is ")
    assert warning.message.endswith(f"% full (alert at {at}%)")
    thresholds(at, at)
    await setup.evaluate()
    critical = (await _open(catalog, POOL_USAGE))[subject]
    assert (critical.id, critical.severity.value) == (warning.id, "critical")
    thresholds(100, 100)
    await setup.evaluate()
    assert await _open(catalog, POOL_USAGE) == {}


async def test_pool_under_its_reserve_alerts_until_space_is_back(
    catalog: Catalog, setup: Setup, tmp_path: Path
) -> None:
    setup.config = dataclasses.replace(
        setup.config, pool=PoolSettings(reserve_bytes=1 << 50, reserve_percent=0)
    )
    await setup.evaluate()
    alert = (await _open(catalog, POOL_RESERVE))[str(tmp_path)]
    assert "under its reserve of" in alert.message
    setup.config = dataclasses.replace(
        setup.config, pool=PoolSettings(reserve_bytes=0, reserve_percent=0)
    )
    await setup.evaluate()
    assert await _open(catalog, POOL_RESERVE) == {}
