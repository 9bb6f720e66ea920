"""Every cmdlet the CLI knows, in CLI.md's order; those not delivered yet have no ``run``.

The names are fixed by CLI.md (plus New-DataSource and Remove-DataSource, which issue 3
adds, and Unregister-Vault, the way back from Register-Vault); parameters grow with each
issue.
"""

from typing import Final

from server.cli.cmdlet import Cmdlet
from server.cli.cmdlets_agents import GET_AGENT, NEW_AGENT_TOKEN, REMOVE_AGENT
from server.cli.cmdlets_alerts import GET_ALERT
from server.cli.cmdlets_backup import GET_RECOVERY_POINT, START_BACKUP
from server.cli.cmdlets_connection import GET_CLOUD_CONNECTION
from server.cli.cmdlets_datasources import GET_DATA_SOURCE, NEW_DATA_SOURCE, REMOVE_DATA_SOURCE
from server.cli.cmdlets_groups import (
    GET_PROTECTION_GROUP,
    NEW_PROTECTION_GROUP,
    REMOVE_PROTECTION_GROUP,
    SET_PROTECTION_GROUP,
)
from server.cli.cmdlets_jobs import GET_JOB, STOP_JOB, WAIT_JOB
from server.cli.cmdlets_pins import NEW_SECURITY_PIN
from server.cli.cmdlets_pool import GET_STORAGE_POOL
from server.cli.cmdlets_restore import GET_RECOVERABLE_ITEM, START_RESTORE
from server.cli.cmdlets_vault import (
    GET_VAULT,
    NEW_VAULT,
    REGISTER_VAULT,
    SET_VAULT_PASSPHRASE,
    UNREGISTER_VAULT,
)
from server.cli.cmdlets_verify import SET_THROTTLING, START_VERIFY

__all__ = ["CMDLETS", "find_cmdlet"]

CMDLETS: Final[tuple[Cmdlet, ...]] = (
    GET_CLOUD_CONNECTION,
    NEW_VAULT,
    REGISTER_VAULT,
    GET_VAULT,
    SET_VAULT_PASSPHRASE,
    UNREGISTER_VAULT,
    SET_THROTTLING,
    NEW_AGENT_TOKEN,
    GET_AGENT,
    REMOVE_AGENT,
    GET_DATA_SOURCE,
    NEW_DATA_SOURCE,
    REMOVE_DATA_SOURCE,
    NEW_PROTECTION_GROUP,
    GET_PROTECTION_GROUP,
    SET_PROTECTION_GROUP,
    REMOVE_PROTECTION_GROUP,
    START_BACKUP,
    GET_RECOVERY_POINT,
    GET_RECOVERABLE_ITEM,
    START_RESTORE,
    GET_JOB,
    WAIT_JOB,
    STOP_JOB,
    GET_STORAGE_POOL,
    START_VERIFY,
    Cmdlet("Start-GarbageCollection", "reclaim space in the storage pool"),
    GET_ALERT,
    NEW_SECURITY_PIN,
)

_BY_LOWER_NAME: Final = {c.name.lower(): c for c in CMDLETS}


def find_cmdlet(name: str) -> Cmdlet | None:
    """Return the cmdlet called ``name`` (case-insensitive), or None."""
    return _BY_LOWER_NAME.get(name.lower())
