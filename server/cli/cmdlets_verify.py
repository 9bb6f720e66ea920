"""Start-Verify and Set-Throttling.

Start-Verify queues a verify job (server/verify_jobs.py): ``-Tier Disk`` (the default)
checks the storage pool and repairs damaged chunks from the vault when one is registered;
``-Tier Cloud`` checks the vault. With ``-Wait`` the job's final state is the exit code
(damage left unrepaired fails the job) and a summary of what was found follows.

Set-Throttling changes the upload throttling of online backups; with no parameters it
prints the current setting. Rates take MARS's units (``512Kbps`` .. ``1023Mbps``).
"""

from typing import Any, Final

from server.cli.args import Kind, Param
from server.cli.cmdlet import Cmdlet, Invocation
from server.cli.cmdlets_backup import WAIT_PARAM
from server.cli.errors import EXIT_OK, UsageError
from server.cli.jobwait import report_started, wait_and_report
from server.cli.render import key_values
from server.cli.resolve import expect_object

__all__ = ["SET_THROTTLING", "START_VERIFY", "throttling_pairs", "verify_summary"]

Obj = dict[str, Any]


def verify_summary(result: Obj) -> list[tuple[str, str]]:
    """The lines a verify job's result shows after -Wait."""
    pairs = [
        ("Tier", str(result.get("tier"))),
        ("CheckedChunks", str(result.get("checked_chunks"))),
        ("CheckedBytes", str(result.get("checked_bytes"))),
        ("DamagedChunks", str(result.get("damaged_chunks"))),
    ]
    if result.get("tier") == "disk":
        pairs.append(("RepairedChunks", str(result.get("repaired_chunks"))))
        broken = result.get("broken_recovery_points") or []
        pairs.append(("BrokenRecoveryPoints", ", ".join(map(str, broken)) or "none"))
        if result.get("repair_unavailable"):
            pairs.append(("NoRepairBecause", str(result["repair_unavailable"])))
    else:
        broken = [b.get("id") for b in result.get("broken_online_recovery_points") or []]
        pairs.append(("BrokenOnlineRecoveryPoints", ", ".join(map(str, broken)) or "none"))
        refused = result.get("refused_manifests") or []
        if refused:
            pairs.append(("RefusedManifests", str(len(refused))))
    return pairs


def _start_verify(inv: Invocation) -> int:
    body: Obj = {"tier": (inv.args.text("Tier") or "Disk").lower()}
    sample = inv.args.number("Sample")
    if sample is not None:
        if not 0 < sample <= 1:
            raise UsageError(f"-Sample must be a fraction in (0, 1], not {sample:g}")
        body["sample"] = sample
    seed = inv.args.integer("Seed")
    if seed is not None:
        body["seed"] = seed
    job = expect_object(inv.client.post("/jobs/verify", body), inv.client, "POST /jobs/verify")
    if not inv.args.switch("Wait"):
        return report_started(inv, job)
    code = wait_and_report(inv, job)
    if not inv.json:
        done = expect_object(inv.client.get(f"/jobs/{job['id']}"), inv.client, "GET /jobs")
        result = done.get("result")
        if isinstance(result, dict) and result.get("tier"):
            inv.out.write(key_values(verify_summary(result)))
    return code


START_VERIFY: Final = Cmdlet(
    "Start-Verify",
    "integrity check of the storage pool or the vault",
    params=(
        Param(
            "Tier", help="Disk (the pool, default) or Cloud (the vault)", choices=("Disk", "Cloud")
        ),
        Param("Sample", Kind.FLOAT, "check only this fraction of the chunks (0 < f <= 1)"),
        Param("Seed", Kind.INT, "seed of the sample (the same seed picks the same chunks)"),
        WAIT_PARAM,
    ),
    run=_start_verify,
    description="Disk re-reads and re-hashes the pool's chunk files, moves damaged ones "
    "aside and names the recovery points they break; when a vault is registered, every "
    "damaged chunk it holds is fetched, checked and written back. Cloud reads every blob "
    "the live online recovery points reference (or a sample), checking each against its "
    "id, and names the online recovery points a damaged object breaks. The job fails when "
    "damage is left unrepaired; Get-Job -Id shows the full result.",
    examples=(
        "stockade Start-Verify -Wait",
        "stockade Start-Verify -Tier Cloud -Sample 0.1 -Wait",
    ),
)


def throttling_pairs(doc: Obj) -> list[tuple[str, str]]:
    return [
        ("Enabled", str(bool(doc.get("enabled")))),
        ("WorkHourBandwidth", str(doc.get("work_hour_bandwidth"))),
        ("NonWorkHourBandwidth", str(doc.get("non_work_hour_bandwidth"))),
        ("WorkDays", ", ".join(map(str, doc.get("work_day_names") or [])) or "none"),
        ("WorkHours", f"{doc.get('work_start', 0):02d}:00-{doc.get('work_end', 0):02d}:00"),
    ]


_CHANGES: Final = (
    ("WorkHourBandwidth", "work_bps"),
    ("NonWorkHourBandwidth", "non_work_bps"),
    ("WorkStart", "work_start"),
    ("WorkEnd", "work_end"),
)


def _set_throttling(inv: Invocation) -> int:
    changes: Obj = {}
    for param, field in _CHANGES:
        value = inv.args.text(param)
        if value is not None:
            changes[field] = value
    days = inv.args.items("WorkDay")
    if days:
        changes["work_days"] = days
    disable, enable = inv.args.switch("Disable"), inv.args.switch("Enable")
    if disable and enable:
        raise UsageError("Set-Throttling takes -Enable or -Disable, not both")
    if disable:
        changes["enabled"] = False
    elif changes or enable:
        changes["enabled"] = True  # setting rates turns throttling on, as in MARS
    if changes:
        doc = inv.client.request("PUT", "/throttling", body=changes)
    else:
        doc = inv.client.get("/throttling")
    doc = expect_object(doc, inv.client, "/throttling")
    if inv.json:
        inv.emit_json(doc)
    else:
        inv.out.write(key_values(throttling_pairs(doc)))
    return EXIT_OK


SET_THROTTLING: Final = Cmdlet(
    "Set-Throttling",
    "upload bandwidth for work and non-work hours",
    params=(
        Param("WorkHourBandwidth", help="upload rate in work hours, 512Kbps .. 1023Mbps"),
        Param("NonWorkHourBandwidth", help="upload rate outside work hours, 512Kbps .. 1023Mbps"),
        Param("WorkDay", Kind.LIST, "work days, like Mon,Tue,Wed,Thu,Fri"),
        Param("WorkStart", help="start of work hours, a whole hour like 08:00"),
        Param("WorkEnd", help="end of work hours, a whole hour like 18:00"),
        Param("Enable", Kind.SWITCH, "turn throttling on with the stored rates"),
        Param("Disable", Kind.SWITCH, "turn throttling off (the rates are kept)"),
    ),
    run=_set_throttling,
    description="Online backups upload at most the work-hour rate on work days between "
    "WorkStart and WorkEnd (server local time) and at most the non-work-hour rate "
    "otherwise. Giving any value turns throttling on; the change applies to running "
    "uploads at once. With no parameters the current setting is shown.",
    examples=(
        "stockade Set-Throttling -WorkHourBandwidth 10Mbps -NonWorkHourBandwidth 100Mbps"
        " -WorkDay Mon,Tue,Wed,Thu,Fri -WorkStart 08:00 -WorkEnd 18:00",
        "stockade Set-Throttling -Disable",
        "stockade Set-Throttling",
    ),
)
