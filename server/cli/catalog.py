"""Every cmdlet the CLI knows, in CLI.md's order; those not delivered yet have no ``run``.

The names are fixed by CLI.md (plus New-DataSource and Remove-DataSource, which issue 3
adds); parameters grow with each issue.
"""

from typing import Final

from server.cli.cmdlet import Cmdlet
from server.cli.cmdlets_agents import GET_AGENT, NEW_AGENT_TOKEN, REMOVE_AGENT
from server.cli.cmdlets_backup import GET_RECOVERY_POINT, START_BACKUP
from server.cli.cmdlets_datasources import GET_DATA_SOURCE, NEW_DATA_SOURCE, REMOVE_DATA_SOURCE
from server.cli.cmdlets_jobs import GET_JOB, STOP_JOB, WAIT_JOB
from server.cli.cmdlets_pool import GET_STORAGE_POOL
from server.cli.cmdlets_restore import GET_RECOVERABLE_ITEM, START_RESTORE

__all__ = ["CMDLETS", "find_cmdlet"]

CMDLETS: Final[tuple[Cmdlet, ...]] = (
    Cmdlet("Get-CloudConnection", "cloud connectivity health (True/False), -Detailed, -Probe"),
    Cmdlet("New-Vault", "create a vault on a backend and write a credentials file valid 48 h"),
    Cmdlet("Register-Vault", "register this server with a vault (credentials file + passphrase)"),
    Cmdlet("Get-Vault", "vault location, state, usage, online RP counts"),
    Cmdlet("Set-VaultPassphrase", "change the vault passphrase (needs -SecurityPin)"),
    Cmdlet("Set-Throttling", "upload bandwidth for work and non-work hours"),
    NEW_AGENT_TOKEN,
    GET_AGENT,
    REMOVE_AGENT,
    GET_DATA_SOURCE,
    NEW_DATA_SOURCE,
    REMOVE_DATA_SOURCE,
    Cmdlet("New-ProtectionGroup", "create a protection group with its disk and online policies"),
    Cmdlet("Get-ProtectionGroup", "list protection groups and their policies"),
    Cmdlet("Set-ProtectionGroup", "change a protection group's members or policies"),
    Cmdlet("Remove-ProtectionGroup", "remove a protection group"),
    START_BACKUP,
    GET_RECOVERY_POINT,
    GET_RECOVERABLE_ITEM,
    START_RESTORE,
    GET_JOB,
    WAIT_JOB,
    STOP_JOB,
    GET_STORAGE_POOL,
    Cmdlet("Start-Verify", "integrity check of the storage pool or the vault"),
    Cmdlet("Start-GarbageCollection", "reclaim space in the storage pool"),
    Cmdlet("Get-Alert", "open alerts (failed or missed backups, agent offline, pool full...)"),
    Cmdlet("New-SecurityPin", "a PIN valid 5 minutes for destructive operations"),
)

_BY_LOWER_NAME: Final = {c.name.lower(): c for c in CMDLETS}


def find_cmdlet(name: str) -> Cmdlet | None:
    """Return the cmdlet called ``name`` (case-insensitive), or None."""
    return _BY_LOWER_NAME.get(name.lower())
