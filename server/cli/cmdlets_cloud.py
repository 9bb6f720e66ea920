"""Cloud-tier helpers of the restore cmdlets: naming an online RP on the command line.

`Start-Restore -FromCloud -RecoveryPoint R`: R is an online RP id (the vault manifest's
opaque name) or the id of the disk RP it copies, in full or as a unique prefix, or
'latest' with -DataSource (the newest online RP of that data source).

The candidates come from the one listing of online RPs, ``GET /recovery-points?tier=cloud``
(server/operator_cloud.py). When the catalog has nothing that matches (an alternate server
whose sync at Register-Vault failed, or an RP another server just wrote), the same listing
is asked again with ``source=vault``: the server reads the vault, records what it finds and
answers the same shape.
"""

from __future__ import annotations

from server.cli.client import ApiClient
from server.cli.errors import UsageError
from server.cli.resolve import expect_list

__all__ = ["online_recovery_points", "resolve_online_rp"]

Obj = dict[str, object]


def _text(o: Obj, key: str) -> str:
    return str(o.get(key) or "")


def _time(o: Obj, key: str) -> float:
    return float(str(o.get(key) or 0))


def online_recovery_points(
    client: ApiClient, data_source_id: str | None = None, *, from_vault: bool = False
) -> list[Obj]:
    query = {"tier": "cloud"}
    if data_source_id:
        query["data_source"] = data_source_id
    if from_vault:
        query["source"] = "vault"
    return expect_list(client.get("/recovery-points", query), client, "GET /recovery-points")


def _pick(points: list[Obj], ref: str, data_source_id: str | None) -> Obj | None:
    """The online RP `ref` names among `points`; None when nothing matches."""
    if ref.lower() == "latest":
        if data_source_id is None:
            raise UsageError("-RecoveryPoint latest needs -DataSource")
        return max(points, key=lambda p: _time(p, "created_at")) if points else None
    exact = [p for p in points if ref in (_text(p, "id"), _text(p, "disk_rp_id"))]
    prefix = [
        p
        for p in points
        if _text(p, "id").startswith(ref) or _text(p, "disk_rp_id").startswith(ref)
    ]
    for found in (exact, prefix):
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            # Several copies of one disk RP: the newest copy is the one to restore.
            disk = {_text(p, "disk_rp_id") for p in found}
            if len(disk) == 1:
                return max(found, key=lambda p: _time(p, "copied_at"))
            names = ", ".join(_text(p, "id") for p in found[:5])
            raise UsageError(f"online recovery point {ref!r} is ambiguous; candidates: {names}")
    return None


def resolve_online_rp(client: ApiClient, ref: str, data_source_id: str | None = None) -> Obj:
    points = online_recovery_points(client, data_source_id)
    found = _pick(points, ref, data_source_id)
    if found is None:
        points = online_recovery_points(client, data_source_id, from_vault=True)
        found = _pick(points, ref, data_source_id)
    if found is not None:
        return found
    if ref.lower() == "latest":
        raise UsageError(f"data source {data_source_id} has no online recovery points")
    hint = "; there are none (run Register-Vault, or Start-Backup -Online)" if not points else ""
    raise UsageError(f"no online recovery point matches {ref!r}{hint}")
