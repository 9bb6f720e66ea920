"""Cloud-tier helpers of the restore cmdlets: naming an online RP on the command line.

`Start-Restore -FromCloud -RecoveryPoint R`: R is an online RP id (the vault manifest's
opaque name) or the id of the disk RP it copies, in full or as a unique prefix, or
'latest' with -DataSource (the newest online RP of that data source).
"""

from __future__ import annotations

from server.cli.client import ApiClient
from server.cli.errors import UsageError
from server.cli.resolve import expect_list

__all__ = ["resolve_online_rp"]

Obj = dict[str, object]


def _text(o: Obj, key: str) -> str:
    return str(o.get(key) or "")


def resolve_online_rp(client: ApiClient, ref: str, data_source_id: str | None = None) -> Obj:
    query = {"data_source": data_source_id} if data_source_id else None
    points = expect_list(
        client.get("/vault/recovery-points", query), client, "GET /vault/recovery-points"
    )
    if ref.lower() == "latest":
        if data_source_id is None:
            raise UsageError("-RecoveryPoint latest needs -DataSource")
        if not points:
            raise UsageError(f"data source {data_source_id} has no online recovery points")
        return max(points, key=lambda p: float(str(p.get("source_created_at") or 0)))
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
                return max(found, key=lambda p: float(str(p.get("created_at") or 0)))
            names = ", ".join(_text(p, "id") for p in found[:5])
            raise UsageError(f"online recovery point {ref!r} is ambiguous; candidates: {names}")
    hint = "; there are none (run Register-Vault, or Start-Backup -Online)" if not points else ""
    raise UsageError(f"no online recovery point matches {ref!r}{hint}")
