"""Alert cmdlets: Get-Alert."""

from collections.abc import Sequence
from typing import Any, Final

from server.cli.args import Kind, Param
from server.cli.cmdlet import Cmdlet, Invocation
from server.cli.errors import EXIT_OK
from server.cli.render import local_time, table
from server.cli.resolve import expect_list

__all__ = ["GET_ALERT", "alert_table"]


def alert_table(alerts: Sequence[dict[str, Any]], *, resolved: bool = False) -> str:
    headers = ["Severity", "Kind", "Subject", "Opened"]
    if resolved:
        headers.append("Resolved")
    headers.append("Message")
    rows = []
    for a in alerts:
        row = [
            str(a.get("severity") or "-").capitalize(),
            str(a.get("kind") or "-"),
            str(a.get("subject") or "-"),
            local_time(a.get("opened_at")),
        ]
        if resolved:
            row.append(local_time(a.get("resolved_at")))
        row.append(str(a.get("message") or ""))
        rows.append(row)
    return table(headers, rows)


def _get_alert(inv: Invocation) -> int:
    show_all = inv.args.switch("All")
    alerts = expect_list(
        inv.client.get("/alerts", {"all": "true" if show_all else None}),
        inv.client,
        "GET /alerts",
    )
    if inv.json:
        inv.emit_json(alerts)
    elif not alerts:
        inv.note("no alerts" if show_all else "no open alerts")
    else:
        inv.out.write(alert_table(alerts, resolved=show_all))
    return EXIT_OK


GET_ALERT: Final = Cmdlet(
    "Get-Alert",
    "open alerts (failed or missed backups, agent offline, pool full...)",
    params=(Param("All", Kind.SWITCH, "resolved alerts too, newest first"),),
    run=_get_alert,
    description="Kinds: failed_job, missed_backup, agent_offline, pool_usage (80%/90% full), "
    "pool_reserve (free space under the reserve: new backups are refused). An alert resolves "
    "itself when its cause clears.",
    examples=("stockade Get-Alert", "stockade Get-Alert -All -Json"),
)
