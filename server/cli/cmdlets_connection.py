"""Get-CloudConnection: is the cloud tier usable now? ``True`` (exit 0) or ``False`` (exit 1).

True only when the vault answered the last contact and its subscription is active, i.e.
when the cloud policy (server/cloud_status.py) allows everything; like the DPM cmdlet the
answer is also the exit code, with -Detailed and -Json too. Times since the last contact
are measured by the server's clock (``since_contact_seconds``), never this machine's.
"""

from typing import Any, Final

from server.cli.args import Kind, Param
from server.cli.cmdlet import Cmdlet, Invocation
from server.cli.errors import EXIT_FALSE, EXIT_OK
from server.cli.render import NONE, key_values, local_time, table
from server.cli.resolve import expect_object

__all__ = ["GET_CLOUD_CONNECTION", "exit_code", "human_age", "render_detailed"]

Obj = dict[str, Any]

_STEPS: Final = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def human_age(seconds: float | None) -> str:
    """``93784`` -> ``1 day 2 hours``: the two largest units, for a glance, not a log."""
    if seconds is None:
        return NONE
    left = int(max(0.0, seconds))
    if left < 1:
        return "0 seconds"
    parts: list[str] = []
    for unit, size in _STEPS:
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count} {unit}{'' if count == 1 else 's'}")
        if len(parts) == 2 or (parts and not count):
            break
    return " ".join(parts)


def exit_code(doc: Obj) -> int:
    return EXIT_OK if doc.get("connected") is True else EXIT_FALSE


def _number(doc: Obj, key: str) -> float | None:
    value = doc.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(doc: Obj, key: str) -> str:
    value = doc.get(key)
    return NONE if value is None or value == "" else str(value)


def _last_contact(doc: Obj) -> str:
    when = _number(doc, "last_success")
    if when is None:
        return "never"
    return f"{local_time(when)} ({human_age(_number(doc, 'since_contact_seconds'))} ago)"


def render_detailed(doc: Obj) -> str:
    """The -Detailed view: one key/value block, then the operations table."""
    lost_after = _number(doc, "lost_after_seconds")
    pairs = [
        ("Connected", str(doc.get("connected") is True)),
        ("Connectivity", _text(doc, "connectivity")),
        ("VaultState", _text(doc, "vault_state")),
        ("Vault", _text(doc, "vault")),
        ("LastContact", _last_contact(doc)),
        ("LastProbe", local_time(_number(doc, "last_probe"))),
        ("LastFailure", local_time(_number(doc, "last_failure"))),
        ("LastError", _text(doc, "last_error")),
        ("LastErrorReason", _text(doc, "last_reason")),
        ("LostAfter", human_age(lost_after)),
        ("CheckedAt", local_time(_number(doc, "checked_at"))),
    ]
    operations = doc.get("operations")
    rows: list[list[str]] = []
    if isinstance(operations, dict):
        for name, decision in operations.items():
            if not isinstance(decision, dict):
                continue
            allowed = decision.get("allowed") is True
            rows.append(
                [
                    str(name).replace("_", " "),
                    "allowed" if allowed else "stopped",
                    str(decision.get("reason") or ""),
                ]
            )
    text = key_values(pairs)
    if rows:
        text += "\n" + table(["Operation", "Status", "Reason"], rows)
    return text


def _get_cloud_connection(inv: Invocation) -> int:
    client = inv.client
    if inv.args.switch("Probe"):
        where = "POST /cloud/connection/probe"
        doc = expect_object(client.post("/cloud/connection/probe"), client, where)
    else:
        doc = expect_object(client.get("/cloud/connection"), client, "GET /cloud/connection")
    if inv.json:
        inv.emit_json([doc])  # Get-* always prints a list
    elif inv.args.switch("Detailed"):
        inv.out.write(render_detailed(doc))
    else:
        inv.out.write(f"{doc.get('connected') is True}\n")
    return exit_code(doc)


GET_CLOUD_CONNECTION: Final = Cmdlet(
    "Get-CloudConnection",
    "cloud connectivity health (True/False), -Detailed, -Probe",
    params=(
        Param(
            "Detailed",
            Kind.SWITCH,
            "show connectivity, last contact, last error, vault state and operations",
        ),
        Param("Probe", Kind.SWITCH, "contact the vault now instead of showing the last result"),
    ),
    run=_get_cloud_connection,
    description="Prints True (exit 0) when the vault answered the last contact and its "
    "subscription is active, else False (exit 1); the exit code follows the answer with "
    "-Detailed and -Json too. Connectivity is 'disconnected' after a failed contact and "
    "'lost' when no contact succeeded for longer than [cloud] lost_after_days (15 by "
    "default): then online backups and, by default, disk backups stop. An expired vault "
    "stops backups; a deprovisioned one stops everything. -Probe reads the vault header and "
    "writes and deletes a small object now.",
    examples=(
        "stockade Get-CloudConnection",
        "stockade Get-CloudConnection -Detailed",
        "stockade Get-CloudConnection -Probe -Json",
    ),
)
