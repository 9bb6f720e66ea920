"""Cloud statuses for the policy tests, as the health monitor reports them, and a status
source a test turns like the monitor would (old -> new, then the gate's callback)."""

from __future__ import annotations

from dataclasses import dataclass

from server.cloud_gate import CloudGate
from server.cloud_status import CloudStatus, Connectivity
from storage_pool.vault.header import VaultState
from tests.unit.server.catalog_fixture import T0

DAY = 86400.0
LOST_AFTER = 15 * DAY


def cloud_status(
    connectivity: Connectivity,
    vault_state: VaultState | None = VaultState.ACTIVE,
    *,
    now: float = T0,
    lost_stops_disk_backups: bool = True,
) -> CloudStatus:
    """The status at `now` for a vault last reached when `connectivity` implies: just now
    when connected, an hour ago when disconnected, 16 days ago when lost."""
    if connectivity is Connectivity.NOT_REGISTERED:
        return CloudStatus.unregistered(
            now, LOST_AFTER, lost_stops_disk_backups=lost_stops_disk_backups
        )
    since = {
        Connectivity.CONNECTED: 0.0,
        Connectivity.DISCONNECTED: 3600.0,
        Connectivity.LOST: 16 * DAY,
    }[connectivity]
    failed = connectivity is not Connectivity.CONNECTED
    return CloudStatus(
        connectivity=connectivity,
        vault_state=vault_state,
        vault="folder:/vault",
        last_success=now - since,
        last_failure=now if failed else None,
        last_error="connection refused" if failed else None,
        last_reason=None,
        last_probe=now,
        checked_at=now,
        lost_after_seconds=LOST_AFTER,
        lost_stops_disk_backups=lost_stops_disk_backups,
    )


ACTIVE = cloud_status(Connectivity.CONNECTED)
EXPIRED = cloud_status(Connectivity.CONNECTED, VaultState.EXPIRED)
DEPROVISIONED = cloud_status(Connectivity.CONNECTED, VaultState.DEPROVISIONED)
LOST = cloud_status(Connectivity.LOST)


@dataclass
class Cloud:
    """What the monitor would say now; `turn` changes it and tells the gate."""

    status: CloudStatus = ACTIVE

    def __call__(self) -> CloudStatus:
        return self.status

    async def turn(self, new: CloudStatus, gate: CloudGate) -> None:
        old, self.status = self.status, new
        await gate.on_change(old, new)
