"""The cloud policy on reads from the vault outside restore jobs (server/cloud_gate.py): a
vault sync (server/vault_sync.py) and the healing of a disk verify from the vault
(server/verify_jobs.py) are restores from cloud. Refused, the sync raises with the policy's
reason and changes nothing; the verify runs without healing and its result says why. Real
catalog, pool and folder vault; the statuses are the health monitor's (as in
test_cloud_policy_jobs.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from server.catalog import JobState
from server.cloud_gate import CloudGate
from server.cloud_status import CloudPolicyRefused, CloudStatus
from server.vault_sync import sync_registered
from server.verify_jobs import VerifyRunner, verify_disk
from storage_pool import StoragePool
from storage_pool.chunk_store import ChunkFile
from tests.unit.pool.file_backup import read_back
from tests.unit.pool.pool_opener import PoolOpener
from tests.unit.server.catalog_fixture import FakeClock
from tests.unit.server.cloud_fixture import (
    Site,
    agent_and_source,
    backup,
    go_online,
    new_vault,
    register,
    site,
)
from tests.unit.server.cloud_policy_fixture import ACTIVE, DEPROVISIONED, EXPIRED, LOST, Cloud
from tests.unit.vault.online_support import tree

DEPROVISIONED_REASON = (
    "restore from cloud stopped by the cloud policy: connectivity connected, vault"
    " deprovisioned (the vault is gone; its online RPs are marked deleted)"
)


def _chunks_by_size(pool: StoragePool) -> list[ChunkFile]:
    return sorted(pool.store.iter_files(), key=lambda cf: cf.size, reverse=True)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))


async def _online(s: Site, tmp_path: Path) -> tuple[dict[bytes, bytes], str]:
    """A registered vault holding one online RP of a pool RP; (files, disk RP id)."""
    await register(s, await new_vault(s, tmp_path / "vault"))
    agent, ds = await agent_and_source(s.catalog, "web01")
    files = tree(9, files=4, size=80_000)
    rp = await backup(s, agent, ds, files)
    await go_online(s, rp, tmp_path / "scratch")
    return files, rp.id


async def test_a_refused_vault_sync_names_the_states_and_changes_nothing(
    tmp_path: Path, pools: PoolOpener, clock: FakeClock
) -> None:
    async with site(tmp_path, pools, "a", clock) as a:
        creds = await new_vault(a, tmp_path / "vault")
        await register(a, creds)
        agent, ds = await agent_and_source(a.catalog, "web01")
        await go_online(a, await backup(a, agent, ds, tree(8, files=2, size=40_000)), tmp_path)
    async with site(tmp_path, pools, "b", clock) as b:
        await register(b, creds)
        cloud = Cloud(DEPROVISIONED)
        with pytest.raises(CloudPolicyRefused) as refused:
            await sync_registered(b.registry, b.catalog, gate=CloudGate(cloud))
        assert str(refused.value) == DEPROVISIONED_REASON
        assert await b.catalog.list_online_rps() == []
        assert await b.catalog.list_agents() == []
        # Restores from cloud are allowed while the vault is expired or out of reach.
        for status in (EXPIRED, LOST, ACTIVE):
            cloud.status = status
            report = await sync_registered(b.registry, b.catalog, gate=CloudGate(cloud))
            assert report.listed == 1
        assert len(await b.catalog.list_online_rps()) == 1


async def test_a_disk_verify_refused_healing_runs_without_it_and_says_why(
    tmp_path: Path, pools: PoolOpener, clock: FakeClock
) -> None:
    async with site(tmp_path, pools, "a", clock) as s:
        files, rp_id = await _online(s, tmp_path)
        bad = _chunks_by_size(s.pool)[0]
        _flip(bad.path)
        cloud = Cloud(DEPROVISIONED)
        runner = VerifyRunner(s.catalog, s.pool, s.registry, clock, gate=CloudGate(cloud))
        done = await runner.run_job(await runner.start("disk"))
        # The check ran (not refused) and found the damage; nothing was read from the vault.
        assert done.state is JobState.FAILED and done.result is not None, done.error
        doc = done.result
        assert (
            doc["repair_unavailable"] == f"healing from the vault skipped: {DEPROVISIONED_REASON}"
        )
        assert doc["repair_skipped_by_policy"] is True and doc["repair_source"] is None
        (problem,) = doc["problems"]
        assert problem["chunk"] == bad.id.hex() and not problem["repaired"]
        assert doc["broken_recovery_points"] == [rp_id]

        # Allowed again, the same verify heals the chunk from the vault.
        cloud.status = EXPIRED
        healed = await runner.run_job(await runner.start("disk"))
        assert healed.state is JobState.SUCCEEDED_WITH_WARNINGS, healed.error
        assert healed.result is not None and healed.result["repair_skipped_by_policy"] is False
        assert await read_back(s.pool, await s.pool.get_recovery_point(rp_id)) == files


@dataclass
class TurnsAfter:
    """The monitor's status: `before` for the first `calls` questions, then `after` (the
    state turns while the verify runs, between its start and its first fetch)."""

    before: CloudStatus
    after: CloudStatus
    calls: int

    def __call__(self) -> CloudStatus:
        self.calls -= 1
        return self.before if self.calls >= 0 else self.after


async def test_healing_stops_when_the_state_turns_during_the_verify(
    tmp_path: Path, pools: PoolOpener, clock: FakeClock
) -> None:
    async with site(tmp_path, pools, "a", clock) as s:
        _, rp_id = await _online(s, tmp_path)
        first, second = _chunks_by_size(s.pool)[:2]
        _flip(first.path)
        _flip(second.path)
        gate = CloudGate(TurnsAfter(ACTIVE, DEPROVISIONED, calls=1))  # the start's question
        doc = await verify_disk(s.pool, s.registry, gate=gate)
        assert doc["repair_source"] == "vault" and doc["repair_skipped_by_policy"] is True
        assert doc["damaged_chunks"] == 2 and doc["repaired_chunks"] == 0
        why = f"healing from the vault skipped: {DEPROVISIONED_REASON}"
        assert {p["repair_failure"] for p in doc["problems"]} == {why}
        assert doc["repair_unavailable"] == why
        assert doc["broken_recovery_points"] == [rp_id]
