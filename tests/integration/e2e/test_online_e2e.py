"""Online backup end to end through the real server, agent, CLI and a folder vault.

The happy path: a tree with a plaintext marker is backed up to disk, then copied online
with `Start-Backup -Online -Wait`; `Get-RecoveryPoint -Tier Cloud` lists the copy, the
scratch area is empty afterwards and no vault file contains the marker.

The scratch bound under load: a data source of random (incompressible) data, a server
whose scratch bound is capped far below it (``scratch.max_bytes``) with small packs; a
thread of the test samples the scratch directory's size every ~20 ms while the online job
runs. No sample, and not the job's own high-water mark, may exceed the bound. The default
variant copies ~200 MiB, the slow one ~1 GiB.

Helpers here are shared with test_online_faults.py.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import ServerProc, Stack

PASSPHRASE = "an offline passphrase for the online e2e vault"
MARKER = b"STOCKADE-PLAINTEXT-MARKER-7f3a9c0e1d"
MIB = 1 << 20
TERMINAL = ("succeeded", "succeeded_with_warnings", "failed", "cancelled")


def start_stack(base: Path, *settings: str) -> Stack:
    base.mkdir(parents=True, exist_ok=True)
    extra = [arg for s in settings for arg in ("--set", s)]
    stack = Stack(base, ServerProc(base, extra=extra))
    stack.server.start()
    return stack


def register_folder_vault(stack: Stack, vault: Path, cred: Path) -> None:
    stack.cli(
        "New-Vault", "-Backend", "folder", "-Path", str(vault), "-OutFile", str(cred), check=True
    )
    stack.cli(
        "Register-Vault", "-CredentialsFile", str(cred), "-Passphrase", PASSPHRASE, check=True
    )


def write_random_tree(root: Path, total: int, file_size: int = 16 * MIB) -> int:
    """`total` bytes of random data in files of `file_size`, plus a marker file; the bytes
    written."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "marker.txt").write_bytes(MARKER * 64)
    written = len(MARKER) * 64
    i = 0
    while written < total:
        n = min(file_size, total - written)
        with (root / f"blob-{i:04d}.bin").open("wb") as fh:
            left = n
            while left:
                step = min(left, 4 * MIB)
                fh.write(os.urandom(step))
                left -= step
        written += n
        i += 1
    return written


def tree_bytes(root: Path) -> int:
    """Total size of the regular files under `root` (0 when it does not exist)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            # A file renamed or deleted while we walked counts for nothing.
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def assert_no_marker(vault: Path) -> None:
    for path in files_under(vault):
        with path.open("rb") as fh:
            tail = b""
            while block := fh.read(8 * MIB):
                assert MARKER not in tail + block, f"plaintext marker found in {path}"
                tail = block[-len(MARKER) :]


def start_online(stack: Stack, ds_id: str) -> dict[str, Any]:
    res = stack.cli("Start-Backup", "-DataSource", ds_id, "-Online", "-Json")
    assert res.code == 0, (res.out, res.err, stack.server.tail())
    doc: Any = res.json()
    job: dict[str, Any] = doc[0] if isinstance(doc, list) else doc
    return job


def api_job(stack: Stack, job_id: str) -> dict[str, Any]:
    """The job over HTTP (cheaper than a CLI process: fault tests poll it often)."""
    status, doc = stack.server.api("GET", f"/api/v1/jobs/{job_id}")
    assert status == 200, doc
    job: dict[str, Any] = doc
    return job


def wait_job(stack: Stack, job_id: str, timeout: float = 900.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api_job(stack, job_id)
        if job["state"] in TERMINAL:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished after {timeout} s\n{stack.server.tail()}")


def backed_up_source(stack: Stack, src: Path) -> dict[str, Any]:
    stack.add_agent("alpha")
    ds = stack.add_files_source("alpha", [src])
    job = stack.backup(ds["id"])
    assert job["state"] == "succeeded", (job, stack.server.tail())
    return ds


@dataclass
class ScratchSampler:
    """Samples the size of the scratch directory from a thread until stopped."""

    path: Path
    interval: float = 0.02
    samples: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(tree_bytes(self.path))
            self._stop.wait(self.interval)

    def __enter__(self) -> ScratchSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


@pytest.fixture
def folder_stack(tmp_path: Path) -> Iterator[Stack]:
    stack = start_stack(tmp_path / "srv")
    try:
        yield stack
    finally:
        stack.close()


def test_online_backup_happy_path(folder_stack: Stack, tmp_path: Path) -> None:
    stack = folder_stack
    src = tmp_path / "src"
    write_random_tree(src, 3 * MIB, file_size=MIB)
    (src / "sub").mkdir()
    (src / "sub" / "notes.txt").write_bytes(b"hello " + MARKER + b" world\n")
    ds = backed_up_source(stack, src)
    vault = tmp_path / "vault"
    register_folder_vault(stack, vault, tmp_path / "v.cred")

    res = stack.cli("Start-Backup", "-DataSource", ds["id"], "-Online", "-Wait", "-Json")
    assert res.code == 0, (res.out, res.err, stack.server.tail())

    (disk_rp,) = stack.recovery_points(ds["id"])
    cloud = stack.cli(
        "Get-RecoveryPoint", "-DataSource", ds["id"], "-Tier", "Cloud", "-Json", check=True
    ).json()
    assert len(cloud) == 1, cloud
    assert disk_rp["id"] in (cloud[0].get("disk_rp_id"), cloud[0].get("id")), cloud
    assert files_under(stack.server.data_dir / "scratch") == []
    assert files_under(vault), "the vault holds nothing"
    assert_no_marker(vault)


def _scratch_bound_run(tmp_path: Path, size: int) -> None:
    bound = 48 * MIB
    stack = start_stack(
        tmp_path / "srv", f"scratch.max_bytes={bound}", "online.pack_mib=8", "online.parallelism=2"
    )
    try:
        src = tmp_path / "src"
        total = write_random_tree(src, size)
        ds = backed_up_source(stack, src)
        vault = tmp_path / "vault"
        register_folder_vault(stack, vault, tmp_path / "v.cred")
        scratch = stack.server.data_dir / "scratch"
        with ScratchSampler(scratch) as sampler:
            job = start_online(stack, ds["id"])
            done = wait_job(stack, job["id"])
        assert done["state"] == "succeeded", (done, stack.server.tail())
        result = done["result"]
        assert result["scratch_bound"] == bound, result
        assert max(sampler.samples) <= bound, (max(sampler.samples), bound)
        assert result["scratch_high_water"] <= bound, result
        # The data did pass through scratch: a sampler that saw nothing proves nothing.
        assert max(sampler.samples) > 0, "no sample saw a scratch file"
        assert result["bytes_uploaded"] >= total, (result, total)
        assert files_under(scratch) == []
    finally:
        stack.close()


def test_scratch_never_exceeds_its_bound(tmp_path: Path) -> None:
    _scratch_bound_run(tmp_path, 200 * MIB)


@pytest.mark.slow
def test_scratch_never_exceeds_its_bound_1gib(tmp_path: Path) -> None:
    _scratch_bound_run(tmp_path, 1024 * MIB)
