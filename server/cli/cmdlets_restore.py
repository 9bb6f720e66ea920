"""Restore-side cmdlets: Get-RecoverableItem and Start-Restore.

Conflict policy of Start-Restore when a file already exists at the target: ``-Rename``
(the default), ``-Skip`` or ``-Overwrite``, at most one. Rename is the default, like
MABS's "create copy": it is the only choice that neither destroys the data now on the
machine (overwrite) nor reports success for files it did not restore (skip).
"""

import stat
from typing import Final

from server.cli.args import Kind, Param
from server.cli.client import segment
from server.cli.cmdlet import Cmdlet, Invocation
from server.cli.cmdlets_backup import WAIT_PARAM
from server.cli.cmdlets_cloud import resolve_online_rp
from server.cli.cmdlets_datasources import DATA_SOURCE_PARAM_HELP
from server.cli.errors import EXIT_OK, UsageError
from server.cli.jobwait import report_started, wait_and_report
from server.cli.render import human_bytes, local_time, table
from server.cli.resolve import (
    expect_list,
    expect_object,
    resolve_agent,
    resolve_data_source,
    resolve_recovery_point,
)

__all__ = ["CONFLICT_SWITCHES", "DEFAULT_CONFLICT", "GET_RECOVERABLE_ITEM", "START_RESTORE"]

CONFLICT_SWITCHES: Final = ("Overwrite", "Skip", "Rename")
DEFAULT_CONFLICT: Final = "rename"

_RP_PARAM: Final = Param(
    "RecoveryPoint",
    help="recovery point id or unique id prefix, or 'latest' with -DataSource",
    required=True,
)
_DS_PARAM: Final = Param("DataSource", help=f"{DATA_SOURCE_PARAM_HELP} (for 'latest')")


def _recovery_point(inv: Invocation) -> dict[str, object]:
    ref = inv.args.text("RecoveryPoint")
    assert ref is not None  # required
    ds_ref = inv.args.text("DataSource")
    ds_id = None if ds_ref is None else str(resolve_data_source(inv.client, ds_ref).get("id"))
    return resolve_recovery_point(inv.client, ref, ds_id)


def _online_recovery_point(inv: Invocation) -> dict[str, object]:
    ref = inv.args.text("RecoveryPoint")
    assert ref is not None  # required
    ds_ref = inv.args.text("DataSource")
    ds_id = None if ds_ref is None else str(resolve_data_source(inv.client, ds_ref).get("id"))
    return resolve_online_rp(inv.client, ref, ds_id)


def _mode(mode: object) -> str:
    if not isinstance(mode, int):
        return "-"
    return stat.filemode(mode) if stat.S_IFMT(mode) else f"{mode:04o}"


def _get_recoverable_item(inv: Invocation) -> int:
    point = _recovery_point(inv)
    path = f"/recovery-points/{segment(str(point.get('id')))}/items"
    items = expect_list(
        inv.client.get(path, {"path": inv.args.text("Path") or ""}), inv.client, f"GET {path}"
    )
    if inv.json:
        inv.emit_json(items)
        return EXIT_OK
    rows = [
        [
            str(i.get("type")),
            _mode(i.get("mode")),
            human_bytes(i.get("size")) if i.get("type") == "file" else "",
            local_time(i.get("mtime")),
            str(i.get("path")),
        ]
        for i in items
    ]
    inv.out.write(table(["Type", "Mode", "Size", "Modified", "Path"], rows, right=("Size",)))
    return EXIT_OK


GET_RECOVERABLE_ITEM: Final = Cmdlet(
    "Get-RecoverableItem",
    "browse files inside a recovery point (-Path)",
    params=(
        _RP_PARAM,
        Param("Path", help="directory inside the recovery point (default: the top level)"),
        _DS_PARAM,
    ),
    run=_get_recoverable_item,
    description="Lists the direct children of -Path.",
    examples=("stockade Get-RecoverableItem -RecoveryPoint 3f2a -Path srv/www",),
)


def _conflict(inv: Invocation) -> str:
    chosen = [name for name in CONFLICT_SWITCHES if inv.args.switch(name)]
    if len(chosen) > 1:
        raise UsageError(
            f"give at most one of -Overwrite, -Skip, -Rename (got "
            f"{', '.join('-' + c for c in chosen)})"
        )
    return chosen[0].lower() if chosen else DEFAULT_CONFLICT


def _start_restore(inv: Invocation) -> int:
    conflict = _conflict(inv)
    from_cloud = inv.args.switch("FromCloud")
    point = _online_recovery_point(inv) if from_cloud else _recovery_point(inv)
    body: dict[str, object] = {
        "rp_id": point.get("id"),
        "items": inv.args.items("Item"),
        "conflict": conflict,
    }
    if from_cloud:
        body["from_cloud"] = True
    target_agent = inv.args.text("TargetAgent")
    if target_agent is not None:
        body["target_agent"] = str(resolve_agent(inv.client, target_agent).get("id"))
    target_path = inv.args.text("TargetPath")
    if target_path is not None:
        body["target_path"] = target_path
    job = expect_object(inv.client.post("/jobs/restore", body), inv.client, "POST /jobs/restore")
    if inv.args.switch("Wait"):
        return wait_and_report(inv, job)
    return report_started(inv, job)


START_RESTORE: Final = Cmdlet(
    "Start-Restore",
    "restore a whole recovery point or -Item paths",
    params=(
        _RP_PARAM,
        Param("Item", Kind.LIST, "paths inside the recovery point (default: all of it)"),
        Param("TargetAgent", help="restore to this agent (default: the one backed up)"),
        Param("TargetPath", help="restore under this directory (default: original location)"),
        Param("Overwrite", Kind.SWITCH, "replace files that exist at the target"),
        Param("Skip", Kind.SWITCH, "keep files that exist at the target"),
        Param("Rename", Kind.SWITCH, "restore beside existing files as a copy (default)"),
        Param(
            "FromCloud",
            Kind.SWITCH,
            "restore from the vault (an online RP id, or the disk RP id it copies)",
        ),
        WAIT_PARAM,
        _DS_PARAM,
    ),
    run=_start_restore,
    description="When a file exists at the target: -Rename (default, like MABS 'create "
    "copy'), -Skip or -Overwrite.",
    examples=(
        "stockade Start-Restore -RecoveryPoint 3f2a -Item srv/www/index.html "
        "-TargetPath /tmp/restore -Wait",
    ),
)
