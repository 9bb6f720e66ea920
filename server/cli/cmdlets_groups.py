"""Protection group cmdlets: New-, Get-, Set- and Remove-ProtectionGroup.

Policy values are passed to the server as given and validated there (server/policy.py),
so the CLI and the API refuse the same values with the same one-line message (exit 2).
Data sources are resolved here like everywhere in the CLI (server/cli/resolve.py) and
sent by id.
"""

import fnmatch
import re
from collections.abc import Sequence
from typing import Any, Final

from server.cli.args import Kind, Param, ParsedArgs
from server.cli.client import segment
from server.cli.cmdlet import Cmdlet, Invocation
from server.cli.cmdlets_datasources import DATA_SOURCE_PARAM_HELP
from server.cli.cmdlets_pins import SECURITY_PIN_PARAM
from server.cli.errors import EXIT_OK, UsageError
from server.cli.render import local_time, table
from server.cli.resolve import expect_list, expect_object, resolve_data_source

__all__ = [
    "GET_PROTECTION_GROUP",
    "NEW_PROTECTION_GROUP",
    "REMOVE_PROTECTION_GROUP",
    "SET_PROTECTION_GROUP",
    "group_table",
]

Obj = dict[str, Any]

_ONLINE_COUNTS: Final = (
    ("OnlineDaily", "daily", "daily online RPs to keep (at least 7)"),
    ("OnlineWeekly", "weekly", "weekly online RPs to keep (at least 4)"),
    ("OnlineMonthly", "monthly", "monthly online RPs to keep (at least 3)"),
    ("OnlineYearly", "yearly", "yearly online RPs to keep (at least 1)"),
)

POLICY_PARAMS: Final[tuple[Param, ...]] = (
    Param(
        "SyncFrequency",
        help="minutes between recovery points: 15, 30, 45, 60, 120, 240, 360, 720 or 1440;"
        " rp-times for only at -RecoveryPointTime",
    ),
    Param("RecoveryPointTime", Kind.LIST, "times of day HH:MM that are recovery points too"),
    Param("RetentionDays", Kind.INT, "days disk recovery points are kept (1-448, default 5)"),
    Param("Online", Kind.SWITCH, "protect online (cloud tier) too"),
    Param("NoOnline", Kind.SWITCH, "no online protection"),
    Param("OnlineTime", Kind.LIST, "online backup times HH:MM, at most 3 a day"),
    *(Param(name, Kind.INT, text) for name, _, text in _ONLINE_COUNTS),
)


def _frequency(raw: str) -> int | str:
    # A number goes as a number, so the server's message shows 17, not '17'.
    return int(raw) if re.fullmatch(r"\d+", raw.strip()) else raw.strip()


def disk_fields(args: ParsedArgs) -> Obj:
    """The disk policy fields given on the command line (none given: {})."""
    disk: Obj = {}
    frequency = args.text("SyncFrequency")
    if frequency is not None:
        disk["sync_frequency_minutes"] = _frequency(frequency)
    if args.given("RecoveryPointTime"):
        disk["recovery_point_times"] = args.items("RecoveryPointTime")
    if args.given("RetentionDays"):
        disk["retention_days"] = args.integer("RetentionDays")
    return disk


def online_fields(args: ParsedArgs) -> Obj:
    """The online policy fields given on the command line (none given: {})."""
    online: Obj = {}
    if args.switch("Online") and args.switch("NoOnline"):
        raise UsageError(f"{args.cmdlet}: give -Online or -NoOnline, not both")
    if args.given("Online"):
        online["enabled"] = args.switch("Online")
    if args.switch("NoOnline"):
        online["enabled"] = False
    if args.given("OnlineTime"):
        online["times"] = args.items("OnlineTime")
    for param, field, _ in _ONLINE_COUNTS:
        if args.given(param):
            online[field] = args.integer(param)
    return online


def _member_ids(inv: Invocation, refs: Sequence[str]) -> list[str]:
    return [str(resolve_data_source(inv.client, ref).get("id")) for ref in refs]


def _sync_text(disk: Obj) -> str:
    minutes = disk.get("sync_frequency_minutes")
    return "rp-times" if minutes is None else f"{minutes} min"


def _online_text(online: Obj) -> str:
    if not online.get("enabled"):
        return "off"
    counts = "/".join(str(online.get(k)) for k in ("daily", "weekly", "monthly", "yearly"))
    return f"{','.join(online.get('times') or [])} keep {counts}"


def group_table(groups: Sequence[Obj]) -> str:
    rows = []
    for g in groups:
        disk = g.get("disk") or {}
        members = g.get("members") or []
        rows.append(
            [
                str(g.get("name")),
                ", ".join(str(m.get("ref") or m.get("id")) for m in members) or "-",
                _sync_text(disk),
                ",".join(disk.get("recovery_point_times") or []) or "-",
                f"{disk.get('retention_days')} d",
                _online_text(g.get("online") or {}),
                local_time(max((m.get("last_rp_at") or 0 for m in members), default=0) or None),
            ]
        )
    headers = ["Name", "Members", "Sync", "RPTimes", "Retention", "Online", "LastRP"]
    return table(headers, rows, right=("Retention",))


def _show(inv: Invocation, group: Obj) -> int:
    if inv.json:
        inv.emit_json(group)
    else:
        inv.out.write(group_table([group]))
    return EXIT_OK


def _new_protection_group(inv: Invocation) -> int:
    name = inv.args.text("Name")
    assert name is not None  # required
    body: Obj = {"name": name, "members": _member_ids(inv, inv.args.items("DataSource"))}
    if disk := disk_fields(inv.args):
        body["disk"] = disk
    if online := online_fields(inv.args):
        body["online"] = online
    created = inv.client.post("/protection-groups", body)
    return _show(inv, expect_object(created, inv.client, "POST /protection-groups"))


NEW_PROTECTION_GROUP: Final = Cmdlet(
    "New-ProtectionGroup",
    "create a protection group with its disk and online policies",
    params=(
        Param("Name", help="name of the new group", required=True),
        Param(
            "DataSource", Kind.LIST, f"members, a,b or repeated; each a {DATA_SOURCE_PARAM_HELP}"
        ),
        *POLICY_PARAMS,
    ),
    run=_new_protection_group,
    positional="Name",
    description="A data source belongs to at most one group. Defaults: hourly recovery "
    "points, 5 days on disk, no online protection (online defaults when enabled: 21:00, "
    "keep 180 daily, 104 weekly, 60 monthly, 10 yearly).",
    examples=(
        "stockade New-ProtectionGroup -Name web -DataSource web01:srv,web02:srv "
        "-SyncFrequency 30 -RetentionDays 14",
        "stockade New-ProtectionGroup -Name db -SyncFrequency rp-times "
        "-RecoveryPointTime 08:00,20:00",
    ),
)


def _get_protection_group(inv: Invocation) -> int:
    groups = expect_list(inv.client.get("/protection-groups"), inv.client, "GET /protection-groups")
    pattern = inv.args.text("Name")
    if pattern is not None:
        folded = pattern.lower()
        groups = [
            g
            for g in groups
            if fnmatch.fnmatchcase(str(g.get("name", "")).lower(), folded)
            or str(g.get("id")) == pattern
        ]
        if not groups and not any(c in pattern for c in "*?["):
            raise UsageError(f"no protection group named {pattern!r}")
    groups.sort(key=lambda g: str(g.get("name", "")).lower())
    if inv.json:
        inv.emit_json(groups)
    else:
        inv.out.write(group_table(groups))
    return EXIT_OK


GET_PROTECTION_GROUP: Final = Cmdlet(
    "Get-ProtectionGroup",
    "list protection groups and their policies",
    params=(Param("Name", help="group name or id; wildcards * ? allowed"),),
    run=_get_protection_group,
    positional="Name",
    examples=("stockade Get-ProtectionGroup", "stockade Get-ProtectionGroup -Name web -Json"),
)


def _set_protection_group(inv: Invocation) -> int:
    name = inv.args.text("Name")
    assert name is not None  # required
    body: Obj = {}
    new_name = inv.args.text("NewName")
    if new_name is not None:
        body["name"] = new_name
    if disk := disk_fields(inv.args):
        body["disk"] = disk
    if online := online_fields(inv.args):
        body["online"] = online
    if inv.args.given("AddDataSource"):
        body["add"] = _member_ids(inv, inv.args.items("AddDataSource"))
    if inv.args.given("RemoveDataSource"):
        body["remove"] = _member_ids(inv, inv.args.items("RemoveDataSource"))
    if not body:
        raise UsageError(
            "Set-ProtectionGroup: nothing to change (see stockade help Set-ProtectionGroup)"
        )
    pin = inv.args.text("SecurityPin")
    if pin is not None:
        body["security_pin"] = pin
    path = f"/protection-groups/{segment(name)}"
    changed = inv.client.request("PATCH", path, body=body)
    return _show(inv, expect_object(changed, inv.client, f"PATCH {path}"))


SET_PROTECTION_GROUP: Final = Cmdlet(
    "Set-ProtectionGroup",
    "change a protection group's members or policies",
    params=(
        Param("Name", help="group name or id", required=True),
        Param("NewName", help="rename the group"),
        Param("AddDataSource", Kind.LIST, "data sources to add: a,b or repeated"),
        Param("RemoveDataSource", Kind.LIST, "data sources to remove (their RPs stay)"),
        *POLICY_PARAMS,
        SECURITY_PIN_PARAM,
    ),
    run=_set_protection_group,
    positional="Name",
    description="Only the values given change. A change that makes existing recovery "
    "points expire (a shorter -RetentionDays, or adding a data source with older recovery "
    "points) needs -SecurityPin from New-SecurityPin.",
    examples=(
        "stockade Set-ProtectionGroup -Name web -AddDataSource web03:srv",
        "stockade Set-ProtectionGroup -Name web -RetentionDays 2 -SecurityPin 12345678",
    ),
)


def _remove_protection_group(inv: Invocation) -> int:
    name = inv.args.text("Name")
    assert name is not None  # required
    delete_data = inv.args.switch("DeleteData")
    body: Obj = {"delete_data": delete_data}
    pin = inv.args.text("SecurityPin")
    if pin is not None:
        body["security_pin"] = pin
    path = f"/protection-groups/{segment(name)}"
    answer = expect_object(
        inv.client.request("DELETE", path, body=body), inv.client, f"DELETE {path}"
    )
    if inv.json:
        inv.emit_json(answer)
        return EXIT_OK
    what = (
        f" and deleted {answer.get('recovery_points_deleted', 0)} recovery point(s)"
        if delete_data
        else "; its data sources keep their recovery points"
    )
    inv.out.write(f"Removed protection group {answer.get('name', name)}{what}.\n")
    return EXIT_OK


REMOVE_PROTECTION_GROUP: Final = Cmdlet(
    "Remove-ProtectionGroup",
    "remove a protection group (keep or delete its data)",
    params=(
        Param("Name", help="group name or id", required=True),
        Param("DeleteData", Kind.SWITCH, "also delete every recovery point of its members"),
        SECURITY_PIN_PARAM,
    ),
    run=_remove_protection_group,
    positional="Name",
    description="Its data sources become unprotected: no more scheduled backups. Their "
    "recovery points stay restorable unless -DeleteData is given, which needs -SecurityPin.",
    examples=(
        "stockade Remove-ProtectionGroup -Name web",
        "stockade Remove-ProtectionGroup -Name web -DeleteData -SecurityPin 12345678",
    ),
)
