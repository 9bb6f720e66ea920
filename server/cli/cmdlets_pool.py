"""Storage pool cmdlets: Get-StoragePool."""

from typing import Final

from server.cli.cmdlet import Cmdlet, Invocation
from server.cli.errors import EXIT_OK
from server.cli.render import human_bytes, key_values
from server.cli.resolve import expect_object

__all__ = ["GET_STORAGE_POOL"]


def _percent(value: object) -> str:
    return f"{value:.1f} %" if isinstance(value, int | float) else "-"


def _yes_no(value: object) -> str:
    # PowerShell's look for booleans; "-" when an older server does not say.
    return str(value) if isinstance(value, bool) else "-"


def _get_storage_pool(inv: Invocation) -> int:
    pool = expect_object(inv.client.get("/storage-pool"), inv.client, "GET /storage-pool")
    if inv.json:
        inv.emit_json([pool])  # Get-* always prints a list
        return EXIT_OK
    ratio = pool.get("dedup_ratio")
    inv.out.write(
        key_values(
            [
                ("Path", str(pool.get("path"))),
                ("RecoveryPoints", f"{pool.get('recovery_points') or 0:,}"),
                ("LogicalSize", human_bytes(pool.get("logical_bytes"))),
                ("StoredSize", human_bytes(pool.get("stored_bytes"))),
                ("Chunks", f"{pool.get('chunk_count') or 0:,}"),
                ("DedupRatio", f"{ratio:.2f}" if isinstance(ratio, int | float) else "-"),
                ("FileSystemSize", human_bytes(pool.get("fs_total_bytes"))),
                ("FreeSpace", human_bytes(pool.get("fs_free_bytes"))),
                ("UsedPercent", _percent(pool.get("fs_used_percent"))),
                ("Reserve", human_bytes(pool.get("reserve_bytes"))),
                ("BelowReserve", _yes_no(pool.get("below_reserve"))),
                ("ScratchPath", str(pool.get("scratch_path"))),
                ("ScratchUsed", human_bytes(pool.get("scratch_used_bytes"))),
            ]
        )
    )
    return EXIT_OK


GET_STORAGE_POOL: Final = Cmdlet(
    "Get-StoragePool",
    "pool size, stored vs logical bytes, dedup ratio, free space and its reserve",
    run=_get_storage_pool,
    examples=("stockade Get-StoragePool -Json",),
)
