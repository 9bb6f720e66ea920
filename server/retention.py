"""The disk-retention rule: which disk recovery points may be pruned now.

Pure code over a snapshot of the catalog (`RetentionView`, read by
`Catalog.retention_view`); no I/O and no clock of its own, so the rule is tested to the
second.

A disk RP is prunable at `now` if and only if all of these hold:

1. its data source is protected (in a live protection group): RPs of unprotected data
   sources, including those of removed groups and removed data sources, are kept until an
   operator deletes them;
2. ``created_at + retention_seconds <= now``, with the group's disk retention;
3. it is not the newest RP of its data source: a data source is never left without a disk
   RP, however old its last one is;
4. when the group has online protection, an online RP covers it: a live (not deleted)
   online RP of the same data source whose source was created at or after it. Until the
   cloud tier has copied something at least as new, the disk copy is the only one;
5. no queued or running restore reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from server.ids import DataSourceId
from server.policy import DiskPolicy, OnlinePolicy
from storage_pool import RecoveryPointId

__all__ = ["DiskRp", "RetentionView", "SourcePolicy", "prunable"]


@dataclass(frozen=True, slots=True)
class DiskRp:
    id: RecoveryPointId
    data_source_id: DataSourceId
    created_at: float
    logical_bytes: int = 0


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    disk: DiskPolicy
    online: OnlinePolicy


@dataclass(frozen=True, slots=True)
class RetentionView:
    recovery_points: Sequence[DiskRp]
    # Protected data sources only; a data source missing here is unprotected.
    policies: Mapping[DataSourceId, SourcePolicy]
    # Per data source, the newest `source_created_at` of its live online RPs: an online RP
    # covers every disk RP created at or before it.
    online_covered_until: Mapping[DataSourceId, float] = field(default_factory=dict)
    # RPs that an active restore job reads.
    in_use: frozenset[RecoveryPointId] = frozenset()


def _newest(rps: Sequence[DiskRp]) -> dict[DataSourceId, DiskRp]:
    newest: dict[DataSourceId, DiskRp] = {}
    for rp in rps:
        best = newest.get(rp.data_source_id)
        if best is None or (rp.created_at, rp.id) > (best.created_at, best.id):
            newest[rp.data_source_id] = rp
    return newest


def prunable(view: RetentionView, now: float) -> list[DiskRp]:
    """The RPs the rule lets go at `now`, oldest first."""
    newest = _newest(view.recovery_points)
    out: list[DiskRp] = []
    for rp in view.recovery_points:
        policy = view.policies.get(rp.data_source_id)
        if policy is None or rp.id in view.in_use:
            continue
        if rp.created_at + policy.disk.retention_seconds > now:
            continue
        if newest[rp.data_source_id].id == rp.id:
            continue
        if policy.online.enabled:
            covered = view.online_covered_until.get(rp.data_source_id)
            if covered is None or covered < rp.created_at:
                continue
        out.append(rp)
    out.sort(key=lambda r: (r.created_at, r.id))
    return out
