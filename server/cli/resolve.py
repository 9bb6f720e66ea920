"""Turn an operator's reference (name, ``agent:name``, id or id prefix) into one API object.

The API lists are fetched and matched here so every cmdlet resolves the same way and an
ambiguous reference is a usage error (exit 2) that lists the candidates, instead of the
server picking one. Matching order, first non-empty wins:

* agents: exact id, exact name, case-insensitive name;
* data sources: exact id, ``agent:name`` (agent matched exactly, then case-insensitively),
  bare name across all agents, id prefix;
* recovery points: exact id, id prefix, or ``latest`` (needs the data source).
"""

from collections.abc import Callable, Sequence
from typing import Any, Final

from server.cli.client import ApiClient
from server.cli.errors import UnreachableError, UsageError

__all__ = [
    "data_source_label",
    "expect_list",
    "expect_object",
    "resolve_agent",
    "resolve_data_source",
    "resolve_recovery_point",
]

Obj = dict[str, Any]
_MAX_LISTED: Final = 10


def expect_list(value: Any, client: ApiClient, what: str) -> list[Obj]:
    """The API promised a list of objects; anything else means the wrong server or version."""
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise UnreachableError(f"{client.server_url} answered {what} with an unexpected shape")
    return value


def expect_object(value: Any, client: ApiClient, what: str) -> Obj:
    if not isinstance(value, dict):
        raise UnreachableError(f"{client.server_url} answered {what} with an unexpected shape")
    return value


def _id(obj: Obj) -> str:
    # Ids are compared as text: the operator typed them, the API may send numbers.
    return str(obj.get("id"))


def data_source_label(ds: Obj) -> str:
    return f"{ds.get('agent_name')}:{ds.get('name')}"


def _pick(
    kind: str, ref: str, found: list[Obj], everything: list[Obj], label: Callable[[Obj], str]
) -> Obj:
    if len(found) == 1:
        return found[0]
    if not found:
        known = ", ".join(label(o) for o in everything[:_MAX_LISTED])
        more = " ..." if len(everything) > _MAX_LISTED else ""
        hint = f"; known: {known}{more}" if everything else f"; there are no {kind}s"
        raise UsageError(f"no {kind} matches {ref!r}{hint}")
    candidates = ", ".join(label(o) for o in found[:_MAX_LISTED])
    more = f" (and {len(found) - _MAX_LISTED} more)" if len(found) > _MAX_LISTED else ""
    raise UsageError(f"{kind} {ref!r} is ambiguous; candidates: {candidates}{more}")


def _first(*groups: Sequence[Obj]) -> list[Obj]:
    for group in groups:
        if group:
            return list(group)
    return []


def resolve_agent(client: ApiClient, ref: str) -> Obj:
    agents = expect_list(client.get("/agents"), client, "GET /agents")
    found = _first(
        [a for a in agents if _id(a) == ref],
        [a for a in agents if a.get("name") == ref],
        [a for a in agents if str(a.get("name", "")).lower() == ref.lower()],
    )
    return _pick("agent", ref, found, agents, lambda a: f"{a.get('name')} (id {a.get('id')})")


def resolve_data_source(client: ApiClient, ref: str) -> Obj:
    sources = expect_list(client.get("/data-sources"), client, "GET /data-sources")
    by_pair: list[Obj] = []
    by_pair_folded: list[Obj] = []
    if ":" in ref:
        agent, name = ref.split(":", 1)
        by_pair = [s for s in sources if s.get("agent_name") == agent and s.get("name") == name]
        by_pair_folded = [
            s
            for s in sources
            if str(s.get("agent_name", "")).lower() == agent.lower() and s.get("name") == name
        ]
    found = _first(
        [s for s in sources if _id(s) == ref],
        by_pair,
        by_pair_folded,
        [s for s in sources if s.get("name") == ref],
        [s for s in sources if _id(s).startswith(ref)],
    )
    return _pick(
        "data source", ref, found, sources, lambda s: f"{data_source_label(s)} (id {s.get('id')})"
    )


def resolve_recovery_point(client: ApiClient, ref: str, data_source_id: str | None = None) -> Obj:
    query = {"data_source": data_source_id} if data_source_id else None
    points = expect_list(client.get("/recovery-points", query), client, "GET /recovery-points")
    if ref.lower() == "latest":
        if data_source_id is None:
            raise UsageError("-RecoveryPoint latest needs -DataSource")
        if not points:
            raise UsageError(f"data source {data_source_id} has no recovery points")
        return max(points, key=lambda p: float(p.get("created_at") or 0))
    found = _first(
        [p for p in points if _id(p) == ref],
        [p for p in points if _id(p).startswith(ref)],
    )
    return _pick(
        "recovery point",
        ref,
        found,
        points,
        lambda p: f"{p.get('id')} ({p.get('agent_name')}:{p.get('data_source_name')})",
    )
