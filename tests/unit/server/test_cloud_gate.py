"""CloudGate (server/cloud_gate.py) over real CloudStatus values: each of the six rows of
the policy table in shared/DESIGN.md, times each of the four operations, plus no vault,
a short disconnection, and the `lost_stops_disk_backups` switch."""

from __future__ import annotations

import pytest

from server.catalog_rows import JobKind, JobRow, JobState, JobTrigger
from server.cloud_gate import CloudGate, operation_of
from server.cloud_status import CloudPolicyRefused, Connectivity, Operation
from server.ids import AgentId, JobId
from storage_pool.vault.header import VaultState
from tests.unit.server.catalog_fixture import T0
from tests.unit.server.cloud_policy_fixture import Cloud, cloud_status

CONNECTED, LOST = Connectivity.CONNECTED, Connectivity.LOST
ACTIVE, EXPIRED, GONE = VaultState.ACTIVE, VaultState.EXPIRED, VaultState.DEPROVISIONED
OPS = (
    Operation.BACKUP_TO_CLOUD,
    Operation.BACKUP_TO_DISK,
    Operation.RESTORE_FROM_CLOUD,
    Operation.RESTORE_FROM_DISK,
)
Y, N = True, False

# The table, row by row: backup to cloud, backup to disk, restore from cloud, from disk.
TABLE = [
    (CONNECTED, ACTIVE, (Y, Y, Y, Y)),
    (CONNECTED, EXPIRED, (N, N, Y, Y)),
    (CONNECTED, GONE, (N, N, N, N)),
    (LOST, ACTIVE, (N, N, Y, Y)),
    (LOST, EXPIRED, (N, N, Y, Y)),
    (LOST, GONE, (N, N, N, N)),
]
CASES = [
    pytest.param(conn, state, op, allowed, id=f"{conn.value}-{state.value}-{op.value}")
    for conn, state, row in TABLE
    for op, allowed in zip(OPS, row, strict=True)
]


@pytest.mark.parametrize(("connectivity", "state", "op", "allowed"), CASES)
def test_the_table_exactly(
    connectivity: Connectivity, state: VaultState, op: Operation, allowed: bool
) -> None:
    gate = CloudGate(Cloud(cloud_status(connectivity, state)))
    assert gate.decision(op).allowed is allowed
    if allowed:
        gate.check(op)
        return
    with pytest.raises(CloudPolicyRefused) as refused:
        gate.check(op)
    message = str(refused.value)
    assert message == gate.decision(op).reason
    assert f"connectivity {connectivity.value}" in message and f"vault {state.value}" in message
    assert op.label in message and "cloud policy" in message
    assert refused.value.decision.operation is op


def test_disconnected_follows_the_connected_rows() -> None:
    for state, row in ((ACTIVE, (Y, Y, Y, Y)), (EXPIRED, (N, N, Y, Y)), (GONE, (N, N, N, N))):
        gate = CloudGate(Cloud(cloud_status(Connectivity.DISCONNECTED, state)))
        assert tuple(gate.decision(op).allowed for op in OPS) == row, state


def test_no_vault_refuses_the_cloud_and_allows_the_disk() -> None:
    gate = CloudGate(Cloud(cloud_status(Connectivity.NOT_REGISTERED, None)))
    gate.check(Operation.BACKUP_TO_DISK)
    gate.check(Operation.RESTORE_FROM_DISK)
    for op in (Operation.BACKUP_TO_CLOUD, Operation.RESTORE_FROM_CLOUD):
        with pytest.raises(CloudPolicyRefused, match="no vault registered"):
            gate.check(op)
    assert set(gate.refused()) == {Operation.BACKUP_TO_CLOUD, Operation.RESTORE_FROM_CLOUD}


def test_the_switch_relaxes_only_lost_active_disk_backups() -> None:
    relaxed = CloudGate(Cloud(cloud_status(LOST, ACTIVE, lost_stops_disk_backups=False)))
    relaxed.check(Operation.BACKUP_TO_DISK)
    with pytest.raises(CloudPolicyRefused, match=r"no successful contact for 16\.0 days"):
        relaxed.check(Operation.BACKUP_TO_CLOUD)
    for state in (EXPIRED, GONE):
        still = CloudGate(Cloud(cloud_status(LOST, state, lost_stops_disk_backups=False)))
        with pytest.raises(CloudPolicyRefused, match=f"vault {state.value}"):
            still.check(Operation.BACKUP_TO_DISK)


def test_the_gate_asks_the_status_every_time() -> None:
    cloud = Cloud(cloud_status(CONNECTED, ACTIVE))
    gate = CloudGate(cloud)
    gate.check(Operation.BACKUP_TO_DISK)
    cloud.status = cloud_status(CONNECTED, EXPIRED)
    with pytest.raises(CloudPolicyRefused, match="vault expired"):
        gate.check(Operation.BACKUP_TO_DISK)


async def test_on_change_without_job_loops_stops_nothing() -> None:
    gate = CloudGate(Cloud())
    await gate.on_change(cloud_status(CONNECTED, ACTIVE), cloud_status(CONNECTED, GONE))
    assert await gate.enforce(cloud_status(CONNECTED, GONE)) == []


def _job(kind: JobKind, **params: object) -> JobRow:
    return JobRow(
        id=JobId("job-000000000001"),
        kind=kind,
        state=JobState.RUNNING,
        agent_id=AgentId("agent-1"),
        data_source_id=None,
        params=params,
        progress={},
        result=None,
        error=None,
        warnings=0,
        created_at=T0,
        started_at=T0,
        ended_at=None,
        updated_at=T0,
        trigger=JobTrigger.MANUAL,
        attempt=1,
        scheduled_for=None,
        retryable=False,
    )


def test_what_each_job_kind_is_for_the_policy() -> None:
    assert operation_of(_job(JobKind.BACKUP)) is Operation.BACKUP_TO_DISK
    assert operation_of(_job(JobKind.ONLINE_BACKUP)) is Operation.BACKUP_TO_CLOUD
    assert operation_of(_job(JobKind.RESTORE)) is Operation.RESTORE_FROM_DISK
    cloud = _job(JobKind.RESTORE, from_cloud=True)
    assert operation_of(cloud, held=True) is Operation.RESTORE_FROM_CLOUD
    # Released: the agent restores the re-seeded RP from the pool.
    assert operation_of(cloud, held=False) is Operation.RESTORE_FROM_DISK
    for kind in (JobKind.PRUNE, JobKind.GC, JobKind.VERIFY):
        assert operation_of(_job(kind)) is None
