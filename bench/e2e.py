"""End-to-end benchmark: Stockade (server + one agent over loopback) against restic.

Run as `.venv/bin/python -m bench.e2e` from the repository root. The Stockade server (with
its own Mosquitto), one agent and the CLI run as real processes on loopback ports with
their default settings; the pool, the restic repository (restic's defaults, cache under
the run directory), the datasets and the restores all sit on the same local disk under
`--out` (default bench/out/, gitignored).

On each shared dataset (mixed 2 GiB seed 1; small profile with 20,000 files seed 2), four
phases, each timed for Stockade and then for restic, back to back:

1. initial backup;
2. unchanged re-backup;
3. backup after `make_dataset.py --mutate 2`;
4. full restore of the newest backup to an empty folder, checked against the source
   tree (contents, modes, owners, mtimes) with tests/support/tree_compare.py.

Before every timed step the page cache is dropped (root only; else both tools run warm and
the output says so), so both tools read cold. Stockade's time is the job's own
started_at..ended_at; beside it the wall time from the `Start-*` CLI call until a 0.1 s
poll of the REST API sees the job end (CLI start-up, dispatch over MQTT, polling).
restic's time is the wall time of its command. MiB/s are on the dataset's logical size
(sum of file sizes). Stored bytes are the apparent size of every file below the pool
directory and the restic repository after each backup (one pool and one repository for
the whole run, so the small dataset's figures include the mixed one's). Peak RSS of the
server and the agent is per job (VmHWM reset before each job when the kernel allows).

Prints a table, the targets of issue 3 met or not, then one JSON line with the same
figures. Exits 0 when the run completed (targets met or not), 1 when a job failed or a
restore differed from its source, 2 when restic is missing. `--quick` runs 200 MiB mixed
and 2,000 small files (a smoke run of a few minutes). At the end the datasets, the pool,
the repository and the restores are removed (`--keep` keeps them); the run directory
keeps the logs (server, agent, restic) until the next run removes it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.e2e_procs import DiskUsage, Run, TreeSize, disk_usage, drop_caches, tree_size
from bench.e2e_report import (
    BACKUP_PHASES,
    TITLES,
    Figures,
    Results,
    figures_json,
    summary_lines,
    table,
    targets,
)
from bench.e2e_restic import INSTALL_HINT, Restic, ResticError, find_restic
from bench.e2e_stockade import JobRun, Stockade, StockadeError
from bench.pool_ingest import ceiling, dataset_script, make_dataset
from tests.support.tree_compare import Node, compare_trees, snapshot

HERE = Path(__file__).resolve().parent
ZSTD_LEVEL = 3  # the pool's default (storage_pool.config.PoolConfig), for the ceiling


class BenchError(RuntimeError):
    """The benchmark cannot produce valid figures (e.g. a restore differs from its source)."""


@dataclass(frozen=True)
class Dataset:
    name: str
    path: Path
    make_args: tuple[str, ...]
    mutate_seed: int


def log(msg: str) -> None:
    print(msg, flush=True)


def verify(expected: dict[bytes, Node], restored: Path, tool: str) -> None:
    problems = compare_trees(expected, snapshot(restored))
    if problems:
        shown = "\n".join(problems[:20])
        raise BenchError(
            f"{tool} restore at {restored} differs from its source in {len(problems)} ways:\n"
            f"{shown}"
        )


def restic_figures(run: Run, logical: TreeSize, stored: DiskUsage | None) -> Figures:
    return Figures(
        seconds=run.wall,
        wall=run.wall,
        logical=logical,
        cpu={"restic": run.cpu},
        rss={"restic": run.peak_rss_mib},
        stored=stored,
    )


@dataclass
class Bench:
    """The two tools and where results go; one call of `dataset` runs its four phases."""

    run: Path
    stockade: Stockade
    restic: Restic | None
    res: Results
    warm: bool

    def cold_start(self) -> None:
        if not self.warm and not drop_caches():
            self.res.cold = False

    def stockade_figures(self, job: JobRun, logical: TreeSize, stored: DiskUsage | None) -> Figures:
        self.res.peaks_per_job &= job.peak_reset
        return Figures(
            seconds=job.job_seconds,
            wall=job.wall,
            logical=logical,
            cpu={name: u.cpu for name, u in job.usage.items()},
            rss={name: u.peak_rss_mib for name, u in job.usage.items()},
            stored=stored,
            queued=job.queued,
        )

    def dataset(self, ds: Dataset) -> None:
        ds_id = self.stockade.add_source(ds.path)
        pool_dir = Path(self.stockade.pool()["path"])
        snapshot_id = ""
        for phase in BACKUP_PHASES:
            if phase == "mutated":
                make_dataset(ds.path, "--mutate", "2", "--seed", str(ds.mutate_seed))
            logical = tree_size(ds.path)
            self.cold_start()
            job = self.stockade.backup(ds_id)
            ours = self.stockade_figures(job, logical, disk_usage(pool_dir))
            self.res.rows[ds.name, phase, "stockade"] = ours
            line = f"{ds.name:6} {TITLES[phase]:24} stockade {ours.seconds:7.2f} s"
            if self.restic is not None:
                self.cold_start()
                run, summary = self.restic.backup(f"{ds.name}-{phase}", ds.path)
                snapshot_id = str(summary["snapshot_id"])
                stored = disk_usage(self.restic.repo)
                self.res.rows[ds.name, phase, "restic"] = restic_figures(run, logical, stored)
                line += f", restic {run.wall:7.2f} s"
            log(line)
        self.restore(ds, ds_id, snapshot_id)

    def restore(self, ds: Dataset, ds_id: str, snapshot_id: str) -> None:
        expected = snapshot(ds.path)
        logical = tree_size(ds.path)
        inside = str(ds.path).lstrip("/")  # both tools restore absolute paths below the target
        target = self.run / "restore" / f"stockade-{ds.name}"
        self.cold_start()
        job = self.stockade.restore(self.stockade.latest_rp(ds_id), target)
        self.res.rows[ds.name, "restore", "stockade"] = self.stockade_figures(job, logical, None)
        verify(expected, target / inside, "Stockade")
        line = f"{ds.name:6} {TITLES['restore']:24} stockade {job.job_seconds:7.2f} s"
        if self.restic is not None:
            target = self.run / "restore" / f"restic-{ds.name}"
            self.cold_start()
            run = self.restic.restore(f"{ds.name}-restore", snapshot_id, target)
            self.res.rows[ds.name, "restore", "restic"] = restic_figures(run, logical, None)
            verify(expected, target / inside, "restic")
            line += f", restic {run.wall:7.2f} s"
        log(line + " (restores verified)")

    def stored_totals(self) -> None:
        """Pool and repository sizes at the end, as the last backup measured them."""
        pool = self.stockade.pool()
        x = self.res.extra
        x["stockade_transient_poll_errors"] = self.stockade.transient_errors
        x["stockade_pool_stored_bytes"] = int(pool["stored_bytes"])
        x["stockade_pool_logical_bytes"] = int(pool["logical_bytes"])
        last = self.res.rows[self.res.datasets[-1], "mutated", "stockade"].stored
        assert last is not None
        x["stockade_pool_du_bytes"], x["stockade_pool_du_allocated_bytes"] = (
            last.apparent,
            last.allocated,
        )
        if self.restic is not None:
            theirs = self.res.rows[self.res.datasets[-1], "mutated", "restic"].stored
            assert theirs is not None
            x["restic_repo_du_bytes"], x["restic_repo_du_allocated_bytes"] = (
                theirs.apparent,
                theirs.allocated,
            )
            x["stored_ratio"] = round(last.apparent / theirs.apparent, 4)
            x["stored_ratio_allocated"] = round(last.allocated / theirs.allocated, 4)


def drop_bulk(run: Path) -> None:
    """Remove datasets, pool, repository and restores; the logs stay for a look."""
    for bulky in ("data", "restore", "restic-repo", "restic-cache", "stockade/server-data"):
        shutil.rmtree(run / bulky, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 MiB mixed, 2,000 small files")
    ap.add_argument("--out", type=Path, default=HERE / "out", help="scratch directory")
    ap.add_argument("--keep", action="store_true", help="keep datasets, pool, repo, restores")
    ap.add_argument("--warm", action="store_true", help="do not drop the page cache")
    ap.add_argument(
        "--skip-restic", action="store_true", help="debugging only: no restic, no ratios"
    )
    return ap.parse_args(argv)


def prepare(args: argparse.Namespace) -> tuple[Path, list[Dataset], Results]:
    """A fresh run directory with both datasets built, older runs removed."""
    mixed_mb, small_files = (200, 2000) if args.quick else (2048, 20_000)
    run = args.out / f"e2e-{time.strftime('%Y%m%dT%H%M%S')}"
    run.mkdir(parents=True)
    for old in args.out.glob("e2e-*"):  # leftovers go now, well before any timed step
        if old != run:
            shutil.rmtree(old, ignore_errors=True)
    datasets = [
        Dataset("mixed", run / "data" / "mixed", ("--size-mb", str(mixed_mb), "--seed", "1"), 3),
        Dataset(
            "small",
            run / "data" / "small",
            ("--profile", "small", "--files", str(small_files), "--seed", "2"),
            4,
        ),
    ]
    log(f"run directory {run} (datasets by {dataset_script()})")
    for ds in datasets:
        make_dataset(ds.path, *ds.make_args)
    res = Results([ds.name for ds in datasets])
    res.extra.update(dataset_mixed_mib=mixed_mb, small_files=small_files, quick=args.quick)
    return run, datasets, res


def execute(args: argparse.Namespace, restic_bin: str | None) -> tuple[Path, Results] | None:
    """Every phase of both datasets; None when a job failed or a restore differed."""
    run, datasets, res = prepare(args)
    # ext4 avoids reusing freshly freed inodes (see bench/pool_ingest.py): let the
    # deletions of older runs settle before anything is timed.
    time.sleep(5 if args.quick else 40)
    res.extra["ceiling_2_threads_mib_s"] = round(ceiling(datasets[0].path, 2, ZSTD_LEVEL), 1)
    stockade: Stockade | None = None
    ok = False
    try:
        restic = None
        if restic_bin is not None:
            restic = Restic(restic_bin, run / "restic-repo", run / "restic-cache", run / "logs")
            res.extra["restic_version"] = restic.version()
            res.extra["restic_repo_version"] = restic.init()
        stockade = Stockade.start(run / "stockade")
        bench = Bench(run, stockade, restic, res, args.warm)
        for ds in datasets:
            bench.dataset(ds)
        bench.stored_totals()
        ok = True
    except (BenchError, StockadeError, ResticError) as err:
        print(f"benchmark failed: {err}", file=sys.stderr)
        return None
    finally:
        if stockade is not None:
            stockade.close()
        if not ok:
            drop_bulk(run)
            print(f"logs kept in {run}", file=sys.stderr)
    return run, res


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    restic_bin = find_restic()
    if args.skip_restic:
        log("WARNING: --skip-restic: no restic figures, no ratios, targets not evaluated")
        restic_bin = None
    elif restic_bin is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    done = execute(args, restic_bin)
    if done is None:
        return 1
    run, res = done
    verdicts = targets(res)
    log("\n" + table(res))
    log("\n" + summary_lines(res, verdicts))
    if not args.keep:
        drop_bulk(run)
    log(f"logs in {run} (removed by the next run)")
    print(json.dumps(figures_json(res, verdicts), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
