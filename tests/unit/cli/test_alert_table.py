"""Get-Alert's table: severity, kind, subject, opened (and resolved with -All), message."""

from server.cli.cmdlets_alerts import alert_table
from server.cli.render import local_time

OPENED = 1_767_268_800.0
ALERT = {
    "id": "al-0123456789",
    "kind": "pool_reserve",
    "subject": "/srv/pool",
    "severity": "critical",
    "message": "storage pool /srv/pool has 1.0 GiB free, under its reserve of 2.0 GiB",
    "opened_at": OPENED,
    "resolved_at": None,
}


def test_open_alerts_table() -> None:
    header, rule, row = alert_table([ALERT]).splitlines()
    assert header.split() == ["Severity", "Kind", "Subject", "Opened", "Message"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert row.startswith("Critical  pool_reserve  /srv/pool")
    assert local_time(OPENED) in row
    assert row.endswith(str(ALERT["message"]))


def test_all_alerts_table_shows_when_each_resolved() -> None:
    resolved = {**ALERT, "severity": "warning", "resolved_at": 1_767_268_900.0}
    lines = alert_table([ALERT, resolved], resolved=True).splitlines()
    assert lines[0].split() == ["Severity", "Kind", "Subject", "Opened", "Resolved", "Message"]
    assert lines[2].startswith("Critical")
    assert local_time(OPENED) + "  -  " in lines[2]
    assert lines[3].startswith("Warning ")
    assert local_time(1_767_268_900.0) in lines[3]
