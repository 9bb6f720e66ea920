"""Figures of the end-to-end benchmark and how they are shown: the table, the targets of
issue 3, and the final JSON line (`bench/e2e.py` runs the phases and fills `Results`).

Ratios are Stockade over restic in MiB/s (both tools see the same logical bytes in a
phase, so it is restic's seconds over Stockade's): above 1 means Stockade is faster.
The stored-bytes ratio is Stockade's pool over restic's repository: below 1 is better.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.e2e_procs import DiskUsage, MiB, TreeSize

BACKUP_PHASES = ("initial", "unchanged", "mutated")
PHASES = (*BACKUP_PHASES, "restore")
TITLES = {
    "initial": "initial backup",
    "unchanged": "unchanged re-backup",
    "mutated": "backup after --mutate 2",
    "restore": "full restore",
}
# (phase, dataset or None for every dataset, minimum Stockade/restic MiB/s ratio)
SPEED_TARGETS = (("initial", "mixed", 1.3), ("unchanged", None, 1.0), ("restore", None, 1.5))


@dataclass
class Figures:
    """One tool in one phase of one dataset."""

    seconds: float  # what MiB/s and the ratios use
    wall: float
    logical: TreeSize
    cpu: dict[str, float]  # process -> CPU seconds
    rss: dict[str, float]  # process -> peak RSS MiB
    stored: DiskUsage | None = None  # after a backup
    queued: float | None = None  # Stockade: job created..started (dispatch)

    @property
    def mib_s(self) -> float:
        return self.logical.bytes / MiB / self.seconds

    @property
    def files_s(self) -> float:
        return self.logical.files / self.seconds


@dataclass
class Results:
    datasets: list[str]
    cold: bool = True  # the page cache was dropped before every timed step
    peaks_per_job: bool = True  # Stockade's RSS peaks were reset before every job
    rows: dict[tuple[str, str, str], Figures] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # scalars for the JSON line

    def ratio(self, ds: str, phase: str, *, wall: bool = False) -> float | None:
        ours, theirs = self.rows.get((ds, phase, "stockade")), self.rows.get((ds, phase, "restic"))
        if ours is None or theirs is None:
            return None
        return theirs.wall / ours.wall if wall else theirs.seconds / ours.seconds


def _fmt(value: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}{spec}}"


def table(res: Results) -> str:
    lines = [
        f"{'dataset':7} {'phase':24} {'tool':8} {'seconds':>8} {'wall s':>7} {'queue s':>7}"
        f" {'MiB/s':>8}"
        f" {'files/s':>8} {'cpu s':>11} {'peak RSS MiB':>13} {'stored MiB':>10} {'x restic':>8}"
    ]
    for ds in res.datasets:
        for phase in PHASES:
            for tool in ("stockade", "restic"):
                f = res.rows.get((ds, phase, tool))
                if f is None:
                    continue
                procs = ("server", "agent") if tool == "stockade" else ("restic",)
                cpu = "/".join(f"{f.cpu[p]:.1f}" for p in procs)
                rss = "/".join(f"{f.rss[p]:.0f}" for p in procs)
                stored = f.stored.apparent / MiB if f.stored else None
                ratio = res.ratio(ds, phase) if tool == "stockade" else None
                lines.append(
                    f"{ds:7} {TITLES[phase]:24} {tool:8} {f.seconds:8.2f} {f.wall:7.2f}"
                    f" {_fmt(f.queued, '.2f', 7)} {f.mib_s:8.1f} {f.files_s:8.0f}"
                    f" {cpu:>11} {rss:>13}"
                    f" {_fmt(stored, '.1f', 10)} {_fmt(ratio, '.2f', 8)}"
                )
    lines.append(
        "seconds: Stockade job started_at..ended_at, restic wall time; wall s: Start-* CLI"
        " call until a 0.1 s poll sees the end; queue s: job created..started"
        "\ncpu s and peak RSS: server/agent for Stockade"
        + ("" if res.peaks_per_job else " (RSS peaks since process start)")
        + "; stored: apparent bytes of the pool dir / restic repo after the backup (cumulative)"
        + f"\npage cache {'dropped before each timed step' if res.cold else 'NOT dropped (warm)'}"
    )
    return "\n".join(lines)


def targets(res: Results) -> dict[str, bool | None]:
    """Each target of issue 3: met, missed, or None when not evaluated (no restic)."""
    out: dict[str, bool | None] = {}
    for phase, only, minimum in SPEED_TARGETS:
        for ds in res.datasets:
            if only is None or ds == only:
                ratio = res.ratio(ds, phase)
                key = f"{ds}_{phase}_ge_{minimum:g}x_restic"
                out[key] = None if ratio is None else ratio >= minimum
    stored = res.extra.get("stored_ratio")
    out["stored_le_restic"] = None if stored is None else stored <= 1.0
    return out


def summary_lines(res: Results, verdicts: dict[str, bool | None]) -> str:
    x = res.extra
    lines = [
        "stored bytes at the end (apparent size of the pool dir and of the restic repo):"
        f" Stockade {x['stockade_pool_du_bytes'] / MiB:.1f} MiB (Get-StoragePool"
        f" stored_bytes {x['stockade_pool_stored_bytes'] / MiB:.1f} MiB)"
        + (
            f", restic {x['restic_repo_du_bytes'] / MiB:.1f} MiB, ratio {x['stored_ratio']:.3f}"
            f" (allocated blocks: {x['stockade_pool_du_allocated_bytes'] / MiB:.1f} vs"
            f" {x['restic_repo_du_allocated_bytes'] / MiB:.1f} MiB,"
            f" ratio {x['stored_ratio_allocated']:.3f})"
            if "stored_ratio" in x
            else ""
        ),
        "in-process ceiling of Stockade's backup work (read + chunk + hash + zstd, no store,"
        f" 2 threads, mixed): {x['ceiling_2_threads_mib_s']:.1f} MiB/s",
    ]
    for key, met in verdicts.items():
        lines.append(
            f"target {key}: {'met' if met else 'not evaluated' if met is None else 'MISSED'}"
        )
    return "\n".join(lines)


def figures_json(res: Results, verdicts: dict[str, bool | None]) -> dict[str, Any]:
    doc: dict[str, Any] = dict(res.extra)
    doc["page_cache_dropped"] = res.cold
    for (ds, phase, tool), f in res.rows.items():
        key = f"{ds}_{phase}_{tool}"
        doc[f"{key}_s"] = round(f.seconds, 3)
        doc[f"{key}_mib_s"] = round(f.mib_s, 1)
        doc[f"{key}_files_s"] = round(f.files_s)
        doc[f"{key}_cpu_s"] = round(sum(f.cpu.values()), 2)
        for proc, mib in f.rss.items():
            doc[f"{ds}_{phase}_{proc}_peak_rss_mib"] = round(mib)
        if tool == "stockade":
            doc[f"{key}_wall_s"] = round(f.wall, 3)
        if f.queued is not None:
            doc[f"{key}_queue_s"] = round(f.queued, 3)
        if f.stored is not None:
            doc[f"{key}_stored_bytes"] = f.stored.apparent
        ratio, ratio_wall = res.ratio(ds, phase), res.ratio(ds, phase, wall=True)
        if ratio is not None and ratio_wall is not None:
            doc[f"{ds}_{phase}_ratio"] = round(ratio, 3)
            doc[f"{ds}_{phase}_ratio_wall"] = round(ratio_wall, 3)
    for ds in res.datasets:
        first = res.rows[ds, "initial", "stockade"].logical
        doc[f"{ds}_logical_bytes"], doc[f"{ds}_files"] = first.bytes, first.files
    for proc in ("server", "agent", "restic"):
        peaks = [f.rss[proc] for f in res.rows.values() if proc in f.rss]
        if peaks:
            doc[f"{proc}_peak_rss_mib"] = round(max(peaks))
    doc["targets"] = verdicts
    doc["targets_met"] = all(v is True for v in verdicts.values())
    return doc
