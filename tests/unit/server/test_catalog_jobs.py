"""Jobs in the catalog: the state machine, duplicate reports, progress, listing, pruning."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from server.catalog import (
    Catalog,
    CatalogValidationError,
    ConflictError,
    DataSourceRow,
    InvalidStateError,
    JobKind,
    JobState,
    NotFoundError,
)
from server.ids import JobId
from tests.unit.server.catalog_fixture import T0, FakeClock, opened


@pytest.fixture
async def source(catalog: Catalog) -> DataSourceRow:
    token, _ = await catalog.create_agent_token(600)
    agent, _, _ = await catalog.register_agent(token, None, "web01")
    return await catalog.add_data_source(agent.id, None, ["/srv"])


async def _backup(catalog: Catalog, ds: DataSourceRow) -> JobId:
    job = await catalog.create_job(JobKind.BACKUP, ds.agent_id, ds.id, {"full": False})
    return job.id


async def test_a_backup_runs_and_succeeds(
    catalog: Catalog, source: DataSourceRow, clock: FakeClock
) -> None:
    job = await catalog.create_job(JobKind.BACKUP, source.agent_id, source.id, {"full": True})
    assert job.id.startswith("job-")
    assert (job.state, job.kind, job.params, job.progress) == (
        JobState.QUEUED,
        JobKind.BACKUP,
        {"full": True},
        {},
    )
    assert (job.created_at, job.updated_at, job.started_at, job.ended_at) == (T0, T0, None, None)
    clock.now = T0 + 1
    running = await catalog.transition_job(job.id, JobState.RUNNING)
    assert (running.state, running.started_at) == (JobState.RUNNING, T0 + 1)
    clock.now = T0 + 2
    assert await catalog.update_progress(job.id, {"files": 3, "bytes": 10, "current_path": "/a"})
    assert (await catalog.get_job(job.id)).progress["files"] == 3
    clock.now = T0 + 3
    done = await catalog.transition_job(
        job.id, JobState.SUCCEEDED_WITH_WARNINGS, result={"rp_id": "x"}, warnings=2
    )
    assert (done.state, done.ended_at, done.result, done.warnings) == (
        JobState.SUCCEEDED_WITH_WARNINGS,
        T0 + 3,
        {"rp_id": "x"},
        2,
    )
    assert done.is_final
    assert done.started_at == T0 + 1


async def test_duplicate_and_late_results_return_the_first(
    catalog: Catalog, source: DataSourceRow, clock: FakeClock
) -> None:
    """MQTT QoS 1 delivers at least once: a second result for a finished job is ignored
    and the first one stays."""
    job_id = await _backup(catalog, source)
    await catalog.transition_job(job_id, JobState.RUNNING)
    clock.now = T0 + 5
    again = await catalog.transition_job(job_id, JobState.RUNNING)  # duplicate "started"
    assert again.started_at == T0
    first = await catalog.transition_job(job_id, JobState.SUCCEEDED, result={"n": 1})
    clock.now = T0 + 9
    with capture_logs() as logs:
        dup = await catalog.transition_job(job_id, JobState.SUCCEEDED, result={"n": 2})
        late = await catalog.transition_job(job_id, JobState.FAILED, error="boom")
    assert dup == first == late
    assert [e["event"] for e in logs] == ["job_transition_ignored"] * 2
    assert not await catalog.update_progress(job_id, {"files": 9})  # finished: not stored
    assert (await catalog.get_job(job_id)).progress == {}


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ([], JobState.SUCCEEDED),
        ([], JobState.SUCCEEDED_WITH_WARNINGS),
        ([JobState.RUNNING], JobState.QUEUED),
    ],
)
async def test_illegal_transitions(
    catalog: Catalog, source: DataSourceRow, path: list[JobState], illegal: JobState
) -> None:
    job_id = await _backup(catalog, source)
    for state in path:
        await catalog.transition_job(job_id, state)
    before = path[-1].value if path else "queued"
    with pytest.raises(InvalidStateError, match=f"cannot go from {before} to {illegal.value}"):
        await catalog.transition_job(job_id, illegal)


@pytest.mark.parametrize("final", [JobState.CANCELLED, JobState.FAILED])
async def test_queued_job_can_end_without_running(
    catalog: Catalog, source: DataSourceRow, final: JobState
) -> None:
    job_id = await _backup(catalog, source)
    job = await catalog.transition_job(job_id, final, error="agent offline")
    assert (job.state, job.error, job.started_at) == (final, "agent offline", None)
    assert not await catalog.update_progress(job_id, {"files": 1})  # only while running


async def test_one_active_backup_per_data_source(catalog: Catalog, source: DataSourceRow) -> None:
    job_id = await _backup(catalog, source)
    assert (await catalog.active_backup_for(source.id)).id == job_id  # type: ignore[union-attr]
    with pytest.raises(ConflictError, match=f"backup job {job_id} .* is already queued"):
        await _backup(catalog, source)
    # A restore from the same data source is no backup and may run beside it.
    await catalog.create_job(JobKind.RESTORE, source.agent_id, source.id, {"rp": "x"})
    await catalog.transition_job(job_id, JobState.CANCELLED)
    assert await catalog.active_backup_for(source.id) is None
    await _backup(catalog, source)


async def test_create_job_checks_its_agent_and_data_source(
    catalog: Catalog, source: DataSourceRow
) -> None:
    with pytest.raises(InvalidStateError, match="needs a data source"):
        await catalog.create_job(JobKind.BACKUP, source.agent_id, None, {})
    with pytest.raises(NotFoundError, match="data source 'ds-0000000000'"):
        await catalog.create_job(JobKind.RESTORE, source.agent_id, "ds-0000000000", {})  # type: ignore[arg-type]
    with pytest.raises(CatalogValidationError, match="not JSON-serialisable"):
        await catalog.create_job(JobKind.BACKUP, source.agent_id, source.id, {"x": object()})
    await catalog.remove_data_source(source.id)
    with pytest.raises(InvalidStateError, match="is removed or not of agent"):
        await _backup(catalog, source)
    await catalog.remove_agent(source.agent_id)
    with pytest.raises(InvalidStateError, match="is removed"):
        await catalog.create_job(JobKind.RESTORE, source.agent_id, None, {})


async def test_removing_an_agent_cancels_its_jobs(catalog: Catalog, source: DataSourceRow) -> None:
    job_id = await _backup(catalog, source)
    await catalog.transition_job(job_id, JobState.RUNNING)
    await catalog.remove_agent(source.agent_id)
    job = await catalog.get_job(job_id)
    assert (job.state, job.error) == (JobState.CANCELLED, "agent removed")


async def test_list_jobs_newest_first_with_filters(
    catalog: Catalog, source: DataSourceRow, clock: FakeClock
) -> None:
    ids = []
    for i in range(4):
        clock.now = T0 + i
        job_id = await _backup(catalog, source)
        await catalog.transition_job(job_id, JobState.FAILED)
        ids.append(job_id)
    restore = await catalog.create_job(JobKind.RESTORE, source.agent_id, None, {})
    assert [j.id for j in await catalog.list_jobs()] == [restore.id, *reversed(ids)]
    assert [j.id for j in await catalog.list_jobs(limit=2)] == [restore.id, ids[3]]
    assert [j.id for j in await catalog.list_jobs(JobState.QUEUED)] == [restore.id]
    assert len(await catalog.list_jobs(data_source_id=source.id)) == 4
    assert len(await catalog.list_jobs(agent_id=source.agent_id)) == 5


async def test_fail_unfinished_jobs_at_start(
    tmp_path: Path, catalog: Catalog, source: DataSourceRow
) -> None:
    queued = await _backup(catalog, source)
    restore = await catalog.create_job(JobKind.RESTORE, source.agent_id, None, {})
    await catalog.transition_job(restore.id, JobState.RUNNING)
    await catalog.close()
    async with opened(tmp_path / "catalog.sqlite") as reopened:
        failed = await reopened.fail_unfinished_jobs()
        assert sorted(failed) == sorted([queued, restore.id])
        for job_id in failed:
            job = await reopened.get_job(job_id)
            assert (job.state, job.error) == (JobState.FAILED, "server restarted")
        assert await reopened.fail_unfinished_jobs() == []


async def test_prune_jobs(catalog: Catalog, source: DataSourceRow, clock: FakeClock) -> None:
    old = await _backup(catalog, source)
    await catalog.transition_job(old, JobState.CANCELLED)
    clock.now = T0 + 100
    active = await _backup(catalog, source)
    assert await catalog.prune_jobs(older_than=T0 + 50) == 1
    with pytest.raises(NotFoundError, match=f"job '{old}'"):
        await catalog.get_job(old)
    assert await catalog.prune_jobs(older_than=T0 + 1000) == 0  # unfinished jobs stay
    assert (await catalog.get_job(active)).state is JobState.QUEUED


async def test_unknown_job(catalog: Catalog) -> None:
    with pytest.raises(NotFoundError, match="job 'job-000000000000' not found"):
        await catalog.transition_job(JobId("job-000000000000"), JobState.RUNNING)
    with pytest.raises(NotFoundError):
        await catalog.update_progress(JobId("job-000000000000"), {})
