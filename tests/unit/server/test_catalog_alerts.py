"""Alerts in the catalog: one open alert per (kind, subject), updates in place, history."""

from __future__ import annotations

import pytest

from server.catalog import (
    AlertSeverity,
    Catalog,
    CatalogValidationError,
    DataSourceRow,
    JobKind,
    JobState,
)
from tests.unit.server.catalog_fixture import T0, FakeClock


@pytest.fixture
async def source(catalog: Catalog) -> DataSourceRow:
    token, _ = await catalog.create_agent_token(600)
    agent, _, _ = await catalog.register_agent(token, None, "web01")
    return await catalog.add_data_source(agent.id, None, ["/srv"])


async def test_open_then_open_again_updates_the_same_alert(
    catalog: Catalog, clock: FakeClock
) -> None:
    first, new = await catalog.open_alert("failed_job", "ds-1", "error", "it failed", {"a": 1})
    assert new is True
    assert first.id.startswith("al-") and len(first.id) == 13
    assert (first.severity, first.message, first.details) == (
        AlertSeverity.ERROR,
        "it failed",
        {"a": 1},
    )
    assert (first.opened_at, first.updated_at, first.resolved_at) == (T0, T0, None)
    clock.now = T0 + 60
    again, new = await catalog.open_alert("failed_job", "ds-1", "critical", "worse", {"a": 2})
    assert new is False
    assert again.id == first.id
    assert (again.severity, again.message, again.details) == (
        AlertSeverity.CRITICAL,
        "worse",
        {"a": 2},
    )
    assert (again.opened_at, again.updated_at) == (T0, T0 + 60)
    assert [a.id for a in await catalog.list_alerts()] == [first.id]


async def test_resolve_keeps_history_and_a_new_open_is_a_new_alert(
    catalog: Catalog, clock: FakeClock
) -> None:
    first, _ = await catalog.open_alert("agent_offline", "ag1", "error", "offline")
    other, _ = await catalog.open_alert("agent_offline", "ag2", "error", "offline too")
    clock.now = T0 + 10
    resolved = await catalog.resolve_alert("agent_offline", "ag1")
    assert resolved is not None
    assert (resolved.id, resolved.resolved_at, resolved.is_open) == (first.id, T0 + 10, False)
    assert await catalog.resolve_alert("agent_offline", "ag1") is None  # idempotent
    assert await catalog.resolve_alert("agent_offline", "never") is None
    assert [a.id for a in await catalog.list_alerts()] == [other.id]
    clock.now = T0 + 20
    reopened, new = await catalog.open_alert("agent_offline", "ag1", "warning", "offline again")
    assert new is True and reopened.id != first.id
    everything = await catalog.list_alerts(include_resolved=True)
    assert [a.id for a in everything] == [reopened.id, other.id, first.id]  # newest first
    assert [a.id for a in await catalog.open_alerts_of_kind("agent_offline")] == [
        other.id,
        reopened.id,
    ]
    assert await catalog.open_alerts_of_kind("pool_usage") == []


@pytest.mark.parametrize(
    ("alert", "problem"),
    [
        (("", "s", "error", "m"), "kind"),
        (("k", "", "error", "m"), "subject"),
        (("k", "s", "fatal", "m"), "severity must be one of warning, error, critical"),
        (("k", "s", "error", ""), "needs a message"),
    ],
)
async def test_bad_alerts_are_refused_and_change_nothing(
    catalog: Catalog, alert: tuple[str, str, str, str], problem: str
) -> None:
    with pytest.raises(CatalogValidationError, match=problem):
        await catalog.open_alert(*alert)
    assert await catalog.list_alerts(include_resolved=True) == []


async def test_latest_backup_outcome_skips_cancelled_and_removed_sources(
    catalog: Catalog, source: DataSourceRow, clock: FakeClock
) -> None:
    async def finish(state: JobState, kind: JobKind = JobKind.BACKUP) -> str:
        ds_id = source.id
        job = await catalog.create_job(kind, source.agent_id, ds_id, {"rp_id": "rp-1"})
        clock.now += 1
        if state is not JobState.CANCELLED:
            await catalog.transition_job(job.id, JobState.RUNNING)
        clock.now += 1
        await catalog.transition_job(job.id, state, error=f"{state} job")
        return job.id

    assert await catalog.latest_backup_outcomes() == {}
    await finish(JobState.SUCCEEDED)
    failed = await finish(JobState.FAILED)
    await finish(JobState.CANCELLED)
    outcomes = await catalog.latest_backup_outcomes()
    assert list(outcomes) == [source.id]
    assert (outcomes[source.id].id, outcomes[source.id].state) == (failed, JobState.FAILED)
    restore_failed = await finish(JobState.FAILED, JobKind.RESTORE)
    restore_ok = await finish(JobState.SUCCEEDED, JobKind.RESTORE)
    restores = await catalog.restore_outcomes()
    assert [j.id for j in restores] == [restore_ok, restore_failed]
    ok = await finish(JobState.SUCCEEDED_WITH_WARNINGS)
    assert (await catalog.latest_backup_outcomes())[source.id].id == ok
    await catalog.remove_data_source(source.id)
    assert await catalog.latest_backup_outcomes() == {}
