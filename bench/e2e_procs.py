"""Measuring processes and trees for the end-to-end benchmark (`bench/e2e.py`).

- Long-lived processes (the Stockade server and agent) are measured from /proc: CPU
  seconds from /proc/PID/stat, peak RSS from VmHWM in /proc/PID/status. Writing "5" to
  /proc/PID/clear_refs resets VmHWM to the current RSS (Linux >= 4.0, needs ptrace rights
  on the process), which gives a peak per phase instead of a peak since start.
- Short-lived commands (restic) run through `run_measured`: spawned without a shell, their
  exit reaped with os.wait4, whose rusage holds that one child's CPU time and peak RSS.
- `drop_caches` empties the page cache (root only) so every timed step starts cold.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` so far (its threads included)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the parenthesised command name, which may itself hold spaces.
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def peak_rss_mib(pid: int) -> float:
    """VmHWM of `pid`: its peak resident set since start or the last `reset_peak_rss`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmHWM line")


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM of `pid` to its current RSS; False when the kernel refuses."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def drop_caches() -> bool:
    """sync, then drop the page cache, dentries and inodes; False when not permitted."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Run:
    """One finished command: exit code, wall and CPU seconds, peak RSS, its output."""

    code: int
    wall: float
    cpu: float
    peak_rss_mib: float
    stdout: str
    stderr: str


def run_measured(argv: Sequence[str], env: Mapping[str, str], out_dir: Path, name: str) -> Run:
    """Run `argv` with stdout/stderr to `out_dir/name.{out,err}`; stdin is /dev/null.

    Output goes to files rather than pipes so a chatty command never blocks on a full pipe
    while nobody reads it, and nothing of ours runs during the timed span but wait4."""
    out_path, err_path = out_dir / f"{name}.out", out_dir / f"{name}.err"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(out_path), flags, 0o644),
        (os.POSIX_SPAWN_OPEN, 2, str(err_path), flags, 0o644),
    ]
    started = time.perf_counter()
    pid = os.posix_spawnp(argv[0], list(argv), dict(env), file_actions=actions)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    return Run(
        code=os.waitstatus_to_exitcode(status),
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        peak_rss_mib=usage.ru_maxrss / 1024,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )


@dataclass(frozen=True)
class TreeSize:
    """Regular files below a root and their summed sizes (the logical size)."""

    files: int
    bytes: int


def tree_size(root: Path) -> TreeSize:
    files = total = 0
    for top, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(top, name))
            if stat.S_ISREG(st.st_mode):
                files += 1
                total += st.st_size
    return TreeSize(files, total)


@dataclass(frozen=True)
class DiskUsage:
    """Bytes of every regular file below a root: apparent (sizes) and allocated (blocks)."""

    apparent: int
    allocated: int


def disk_usage(root: Path) -> DiskUsage:
    apparent = allocated = 0
    for top, _dirs, names in os.walk(root):
        for name in names:
            try:
                st = os.lstat(os.path.join(top, name))
            except FileNotFoundError:  # a temporary file renamed or removed meanwhile
                continue
            if stat.S_ISREG(st.st_mode):
                apparent += st.st_size
                allocated += st.st_blocks * 512
    return DiskUsage(apparent, allocated)
