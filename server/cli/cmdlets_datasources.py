"""Data source cmdlets: Get-DataSource, New-DataSource, Remove-DataSource.

Agents and data sources are resolved on the client (``server/cli/resolve.py``) and sent to
the API by id, so an ambiguous reference fails here with its candidates.
"""

from collections.abc import Sequence
from typing import Any, Final

from server.cli.args import Kind, Param
from server.cli.client import segment
from server.cli.cmdlet import Cmdlet, Invocation
from server.cli.cmdlets_pins import SECURITY_PIN_PARAM
from server.cli.errors import EXIT_OK
from server.cli.render import local_time, table
from server.cli.resolve import (
    data_source_label,
    expect_list,
    expect_object,
    resolve_agent,
    resolve_data_source,
)

__all__ = ["GET_DATA_SOURCE", "NEW_DATA_SOURCE", "REMOVE_DATA_SOURCE", "data_source_table"]

DATA_SOURCE_PARAM_HELP: Final = "data source: agent:name, id, or a name unique across agents"


def data_source_table(sources: Sequence[dict[str, Any]]) -> str:
    rows = [
        [
            str(s.get("agent_name")),
            str(s.get("name")),
            str(s.get("id")),
            str(s.get("kind") or "-"),
            ", ".join(str(p) for p in s.get("paths") or []),
            str(s.get("rp_count") or 0),
            local_time(s.get("last_rp_at")),
        ]
        for s in sources
    ]
    headers = ["Agent", "Name", "Id", "Kind", "Paths", "RPs", "LastRP"]
    return table(headers, rows, right=("RPs",))


def _get_data_source(inv: Invocation) -> int:
    agent_ref = inv.args.text("Agent")
    query = None
    if agent_ref is not None:
        query = {"agent": str(resolve_agent(inv.client, agent_ref).get("id"))}
    sources = expect_list(inv.client.get("/data-sources", query), inv.client, "GET /data-sources")
    sources.sort(key=lambda s: data_source_label(s).lower())
    if inv.json:
        inv.emit_json(sources)
    else:
        inv.out.write(data_source_table(sources))
    return EXIT_OK


GET_DATA_SOURCE: Final = Cmdlet(
    "Get-DataSource",
    "list protectable and protected data sources",
    params=(Param("Agent", help="only this agent's data sources (name or id)"),),
    run=_get_data_source,
    positional="Agent",
    examples=("stockade Get-DataSource -Agent web01",),
)


def _new_data_source(inv: Invocation) -> int:
    agent_ref = inv.args.text("Agent")
    assert agent_ref is not None  # required
    agent = resolve_agent(inv.client, agent_ref)
    body: dict[str, Any] = {
        "agent": str(agent.get("id")),
        "paths": inv.args.items("Path"),
        "excludes": inv.args.items("Exclude"),
    }
    name = inv.args.text("Name")
    if name is not None:
        body["name"] = name
    created = expect_object(
        inv.client.post("/data-sources", body), inv.client, "POST /data-sources"
    )
    if inv.json:
        inv.emit_json(created)
    else:
        inv.out.write(data_source_table([created]))
    return EXIT_OK


NEW_DATA_SOURCE: Final = Cmdlet(
    "New-DataSource",
    "protect paths of an agent as a new data source",
    params=(
        Param("Agent", help="agent name or id", required=True),
        Param("Name", help="data source name (server default: derived from the paths)"),
        Param("Path", Kind.LIST, "absolute paths on the agent: a,b or repeated", required=True),
        Param("Exclude", Kind.LIST, "glob patterns to leave out: a,b or repeated"),
    ),
    run=_new_data_source,
    description="Items of list parameters are separated by commas; write \\, for a comma "
    "inside a path.",
    examples=("stockade New-DataSource -Agent web01 -Name srv -Path /srv,/etc -Exclude '*.tmp'",),
)


def _remove_data_source(inv: Invocation) -> int:
    ref = inv.args.text("DataSource")
    assert ref is not None  # required
    source = resolve_data_source(inv.client, ref)
    source_id = str(source.get("id"))
    body: dict[str, Any] = {"delete_data": inv.args.switch("DeleteData")}
    pin = inv.args.text("SecurityPin")
    if pin is not None:
        body["security_pin"] = pin
    answer = inv.client.request("DELETE", f"/data-sources/{segment(source_id)}", body=body)
    if inv.json:
        inv.emit_json(answer if answer is not None else {"removed": source_id})
    else:
        suffix = " and its recovery points" if body["delete_data"] else ""
        inv.out.write(
            f"Removed data source {data_source_label(source)} (id {source_id}){suffix}.\n"
        )
    return EXIT_OK


REMOVE_DATA_SOURCE: Final = Cmdlet(
    "Remove-DataSource",
    "stop protecting a data source",
    params=(
        Param("DataSource", help=DATA_SOURCE_PARAM_HELP, required=True),
        Param("DeleteData", Kind.SWITCH, "also delete its recovery points"),
        SECURITY_PIN_PARAM,
    ),
    run=_remove_data_source,
    positional="DataSource",
    description="Its recovery points stay restorable unless -DeleteData is given, which "
    "needs -SecurityPin.",
    examples=(
        "stockade Remove-DataSource -DataSource web01:srv",
        "stockade Remove-DataSource web01:srv -DeleteData -SecurityPin 12345678",
    ),
)
