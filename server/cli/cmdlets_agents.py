"""Agent cmdlets: New-AgentToken, Get-Agent, Remove-Agent."""

import fnmatch
import ipaddress
import shlex
from typing import Final
from urllib.parse import urlsplit

from server.cli.args import Kind, Param
from server.cli.client import segment
from server.cli.cmdlet import Cmdlet, Invocation
from server.cli.cmdlets_pins import SECURITY_PIN_PARAM
from server.cli.errors import EXIT_OK, UsageError
from server.cli.render import key_values, local_time, table
from server.cli.resolve import expect_list, expect_object

__all__ = ["GET_AGENT", "NEW_AGENT_TOKEN", "REMOVE_AGENT"]


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _new_agent_token(inv: Invocation) -> int:
    ttl = inv.args.integer("TtlMinutes")
    body = {} if ttl is None else {"ttl_minutes": ttl}
    answer = expect_object(inv.client.post("/agent-tokens", body), inv.client, "POST /agent-tokens")
    server_url = inv.client.server_url
    token = str(answer.get("token"))
    command = shlex.join(["stockade-agent", "register", "--server", server_url, "--token", token])
    if _is_loopback(server_url):
        inv.note(
            f"note: {server_url} is a loopback address; on the protected machine use a name "
            "or address of this server that it can reach"
        )
    if inv.json:
        inv.emit_json({**answer, "server_url": server_url, "register_command": command})
        return EXIT_OK
    inv.out.write(
        key_values([("Token", token), ("Expires", local_time(answer.get("expires_at")))])
        + "\nRun this on the protected machine (it can be used once, before it expires):\n"
        + f"  {command}\n"
    )
    return EXIT_OK


NEW_AGENT_TOKEN: Final = Cmdlet(
    "New-AgentToken",
    "one-time registration token for a new agent (expires)",
    params=(
        Param("TtlMinutes", Kind.INT, "minutes the token stays valid (server default)", minimum=1),
    ),
    run=_new_agent_token,
    description="Prints the token, its expiry and the `stockade-agent register` line to run "
    "on the machine to protect.",
    examples=("stockade New-AgentToken -TtlMinutes 30",),
)


def _get_agent(inv: Invocation) -> int:
    agents = expect_list(inv.client.get("/agents"), inv.client, "GET /agents")
    pattern = inv.args.text("Name")
    if pattern is not None:
        folded = pattern.lower()
        agents = [
            a
            for a in agents
            if fnmatch.fnmatchcase(str(a.get("name", "")).lower(), folded)
            or str(a.get("id")) == pattern
        ]
        if not agents and not any(c in pattern for c in "*?["):
            raise UsageError(f"no agent named {pattern!r}")
    agents.sort(key=lambda a: str(a.get("name", "")).lower())
    if inv.json:
        inv.emit_json(agents)
        return EXIT_OK
    rows = [
        [
            str(a.get("name")),
            str(a.get("id")),
            str(bool(a.get("online"))),
            local_time(a.get("last_seen_at")),
            local_time(a.get("last_backup_at")),
            str(a.get("version") or "-"),
        ]
        for a in agents
    ]
    inv.out.write(table(["Name", "Id", "Online", "LastSeen", "LastBackup", "Version"], rows))
    return EXIT_OK


GET_AGENT: Final = Cmdlet(
    "Get-Agent",
    "list agents with online state and last backup",
    params=(Param("Name", help="agent name or id; wildcards * ? allowed"),),
    run=_get_agent,
    positional="Name",
    examples=("stockade Get-Agent", "stockade Get-Agent -Name 'web*' -Json"),
)


def _remove_agent(inv: Invocation) -> int:
    name = inv.args.text("Name")
    assert name is not None  # required
    query = {"delete_data": 1} if inv.args.switch("DeleteData") else None
    path = f"/agents/{segment(name)}"
    pin = inv.args.text("SecurityPin")
    # The PIN goes in the body, out of the server's access log.
    body = None if pin is None else {"security_pin": pin}
    answer = inv.client.request("DELETE", path, query=query, body=body)
    if inv.json:
        inv.emit_json(answer if answer is not None else {"removed": name})
        return EXIT_OK
    removed = answer.get("removed") if isinstance(answer, dict) else None
    suffix = " and its recovery points" if query else ""
    inv.out.write(f"Removed agent {name}{f' (id {removed})' if removed else ''}{suffix}.\n")
    return EXIT_OK


REMOVE_AGENT: Final = Cmdlet(
    "Remove-Agent",
    "unregister an agent",
    params=(
        Param("Name", help="agent name or id", required=True),
        Param("DeleteData", Kind.SWITCH, "also delete the agent's recovery points"),
        SECURITY_PIN_PARAM,
    ),
    run=_remove_agent,
    positional="Name",
    description="Unregisters the agent: its credential stops working. Its recovery points "
    "stay restorable unless -DeleteData is given, which needs -SecurityPin.",
    examples=(
        "stockade Remove-Agent -Name web01",
        "stockade Remove-Agent web01 -DeleteData -SecurityPin 12345678",
    ),
)
