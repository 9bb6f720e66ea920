"""Backup-side cmdlets: Start-Backup and Get-RecoveryPoint."""

from collections.abc import Sequence
from typing import Any, Final

from server.cli.args import Kind, Param
from server.cli.cmdlet import Cmdlet, Invocation
from server.cli.cmdlets_datasources import DATA_SOURCE_PARAM_HELP
from server.cli.errors import EXIT_OK
from server.cli.jobwait import report_started, wait_and_report
from server.cli.render import human_bytes, local_time, table
from server.cli.resolve import expect_list, expect_object, resolve_data_source

__all__ = ["GET_RECOVERY_POINT", "START_BACKUP", "WAIT_PARAM", "recovery_point_table"]

WAIT_PARAM: Final = Param(
    "Wait", Kind.SWITCH, "wait for the job; its final state is the exit code (0 ok, 1 failed)"
)


def _start_backup(inv: Invocation) -> int:
    ref = inv.args.text("DataSource")
    assert ref is not None  # required
    source = resolve_data_source(inv.client, ref)
    job = expect_object(
        inv.client.post("/jobs/backup", {"data_source": str(source.get("id"))}),
        inv.client,
        "POST /jobs/backup",
    )
    if inv.args.switch("Wait"):
        return wait_and_report(inv, job)
    return report_started(inv, job)


START_BACKUP: Final = Cmdlet(
    "Start-Backup",
    "create a recovery point now (-DataSource, -Wait)",
    params=(Param("DataSource", help=DATA_SOURCE_PARAM_HELP, required=True), WAIT_PARAM),
    run=_start_backup,
    positional="DataSource",
    examples=("stockade Start-Backup -DataSource web01:srv -Wait",),
)


def recovery_point_table(points: Sequence[dict[str, Any]]) -> str:
    rows = [
        [
            str(p.get("id")),
            f"{p.get('agent_name')}:{p.get('data_source_name')}",
            local_time(p.get("created_at")),
            f"{p.get('files') or 0:,}",
            human_bytes(p.get("logical_bytes")),
            str(p.get("tier") or "disk").capitalize(),
        ]
        for p in points
    ]
    headers = ["Id", "DataSource", "Created", "Files", "Size", "Tier"]
    return table(headers, rows, right=("Files", "Size"))


def _get_recovery_point(inv: Invocation) -> int:
    points: list[dict[str, Any]] = []
    if inv.args.text("Tier") == "Cloud":
        inv.note("note: the cloud tier is not available in this version; no online recovery points")
    else:
        ref = inv.args.text("DataSource")
        query = None
        if ref is not None:
            query = {"data_source": str(resolve_data_source(inv.client, ref).get("id"))}
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
    "list recovery points (-Tier Disk|Cloud, -DataSource)",
    params=(
        Param("DataSource", help=DATA_SOURCE_PARAM_HELP),
        Param("Tier", help="Disk (default) or Cloud", choices=("Disk", "Cloud")),
    ),
    run=_get_recovery_point,
    positional="DataSource",
    description="Oldest first. -Tier Cloud lists online recovery points (none yet in this "
    "version).",
    examples=("stockade Get-RecoveryPoint -DataSource web01:srv -Json",),
)
