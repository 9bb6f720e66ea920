"""Backup-side cmdlets: Start-Backup and Get-RecoveryPoint."""

from collections.abc import Sequence
from typing import Any, Final

from server.cli.args import Kind, Param
from server.cli.cmdlet import Cmdlet, Invocation
from server.cli.cmdlets_datasources import DATA_SOURCE_PARAM_HELP
from server.cli.errors import EXIT_OK, UsageError
from server.cli.group_backup import start_group_backup
from server.cli.jobwait import report_started, wait_and_report
from server.cli.render import human_bytes, local_time, table
from server.cli.resolve import expect_list, expect_object, resolve_data_source

__all__ = ["GET_RECOVERY_POINT", "START_BACKUP", "WAIT_PARAM", "recovery_point_table"]

WAIT_PARAM: Final = Param(
    "Wait", Kind.SWITCH, "wait for the job; its final state is the exit code (0 ok, 1 failed)"
)


def _start_backup(inv: Invocation) -> int:
    ref = inv.args.text("DataSource")
    group = inv.args.text("ProtectionGroup")
    if (ref is None) == (group is None):
        raise UsageError("Start-Backup needs -DataSource or -ProtectionGroup (one of them)")
    online = inv.args.switch("Online")
    if group is not None:
        return start_group_backup(inv, group, online=online)
    assert ref is not None
    source = resolve_data_source(inv.client, ref)
    body: dict[str, Any] = {"data_source": str(source.get("id"))}
    if online:
        body["online"] = True
    job = expect_object(inv.client.post("/jobs/backup", body), inv.client, "POST /jobs/backup")
    if inv.args.switch("Wait"):
        return wait_and_report(inv, job)
    return report_started(inv, job)


START_BACKUP: Final = Cmdlet(
    "Start-Backup",
    "create a recovery point now (-DataSource or -ProtectionGroup, -Online, -Wait)",
    params=(
        Param("DataSource", help=DATA_SOURCE_PARAM_HELP),
        Param("ProtectionGroup", help="back up every member of this group (name or id)"),
        Param(
            "Online",
            Kind.SWITCH,
            "copy the latest disk recovery point to the vault instead (an online backup)",
        ),
        WAIT_PARAM,
    ),
    run=_start_backup,
    positional="DataSource",
    description="With -ProtectionGroup, one backup job per member; a member whose backup "
    "is already queued or running is reported and left alone. -Wait waits for every job; "
    "the exit code is 1 if any failed. -Online copies the latest disk recovery point of "
    "each data source to the registered vault (refused without a vault or a disk "
    "recovery point).",
    examples=(
        "stockade Start-Backup -DataSource web01:srv -Wait",
        "stockade Start-Backup -DataSource web01:srv -Online -Wait",
        "stockade Start-Backup -ProtectionGroup web -Wait",
    ),
)


def _tier(p: dict[str, Any]) -> str:
    tier = str(p.get("tier") or "disk").capitalize()
    # An online RP of a vault this server was unregistered from (server/vault_unregister.py).
    return f"{tier} (unregistered)" if p.get("vault_registered") is False else tier


def recovery_point_table(points: Sequence[dict[str, Any]]) -> str:
    rows = [
        [
            str(p.get("id")),
            f"{p.get('agent_name')}:{p.get('data_source_name')}",
            local_time(p.get("created_at")),
            f"{p.get('files') or 0:,}",
            human_bytes(p.get("logical_bytes")),
            _tier(p),
        ]
        for p in points
    ]
    headers = ["Id", "DataSource", "Created", "Files", "Size", "Tier"]
    return table(headers, rows, right=("Files", "Size"))


def _get_recovery_point(inv: Invocation) -> int:
    tier = (inv.args.text("Tier") or "Disk").lower()
    ref = inv.args.text("DataSource")
    query: dict[str, str] = {} if tier == "disk" else {"tier": tier}
    if ref is not None:
        query["data_source"] = str(resolve_data_source(inv.client, ref).get("id"))
    points = expect_list(
        inv.client.get("/recovery-points", query), inv.client, "GET /recovery-points"
    )
    points.sort(key=lambda p: float(p.get("created_at") or 0))
    if inv.json:
        inv.emit_json(points)
    else:
        inv.out.write(recovery_point_table(points))
    return EXIT_OK


GET_RECOVERY_POINT: Final = Cmdlet(
    "Get-RecoveryPoint",
    "list recovery points (-Tier Disk|Cloud|All, -DataSource)",
    params=(
        Param("DataSource", help=DATA_SOURCE_PARAM_HELP),
        Param("Tier", help="Disk (default), Cloud or All", choices=("Disk", "Cloud", "All")),
    ),
    run=_get_recovery_point,
    positional="DataSource",
    description="Oldest first. -Tier Cloud lists the online recovery points (copies in the "
    "vault); their Created is the time of the disk recovery point they copy.",
    examples=(
        "stockade Get-RecoveryPoint -DataSource web01:srv -Json",
        "stockade Get-RecoveryPoint -Tier Cloud",
    ),
)
