from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from storage_pool import StoragePool
from storage_pool.vault import pack_build, uploader
from storage_pool.vault.pack import PackWriter
from storage_pool.vault.scratch import ScratchBudget
from tests.unit.vault.test_online_backup import PACK, _vault, pool  # noqa: F401
from tests.unit.pool.file_backup import backup_files
from tests.unit.vault.online_support import tree

LOG: list[str] = []
T0 = time.monotonic()


def log(msg: str) -> None:
    LOG.append(f"{time.monotonic()-T0:.4f} {threading.current_thread().name} {msg}")


async def test_dbg(pool: StoragePool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    orig_finish = PackWriter.finish
    orig_discard = pack_build.PackBuild.discard
    orig_release = uploader._Packer._release
    orig_upload = uploader._Packer._upload
    orig_abort = uploader._Packer.abort

    def finish(self):  # type: ignore[no-untyped-def]
        log(f"finish start {self.name[:6]}")
        r = orig_finish(self)
        log(f"finish end {self.name[:6]}")
        return r

    def discard(self):  # type: ignore[no-untyped-def]
        log(f"discard start {self.name[:6]} writer={self._writer is not None}")
        orig_discard(self)
        log(f"discard end {self.name[:6]}")

    async def release(self, build):  # type: ignore[no-untyped-def]
        log(f"release {build.name[:6]} in={build.name in self.unreleased}")
        try:
            await orig_release(self, build)
        except BaseException as e:
            log(f"release exc {build.name[:6]} {e!r}")
            raise
        log(f"release done {build.name[:6]}")

    async def upload(self, build, finished, reserved):  # type: ignore[no-untyped-def]
        log(f"upload start {build.name[:6]}")
        try:
            await orig_upload(self, build, finished, reserved)
        except BaseException as e:
            log(f"upload exc {build.name[:6]} {e!r}")
            raise

    async def abort(self):  # type: ignore[no-untyped-def]
        log(f"abort start build={self.build.name[:6] if self.build else None} tasks={len(self.tasks)} unrel={[n[:6] for n in self.unreleased]}")
        await orig_abort(self)
        log("abort end")

    monkeypatch.setattr(PackWriter, "finish", finish)
    monkeypatch.setattr(pack_build.PackBuild, "discard", discard)
    monkeypatch.setattr(uploader._Packer, "_release", release)
    monkeypatch.setattr(uploader._Packer, "_upload", upload)
    monkeypatch.setattr(uploader._Packer, "abort", abort)

    vault, backend = await _vault(tmp_path, fail_after=3)
    files = tree(4, files=8, size=400 * 1024)
    rp, _, _ = await backup_files(pool, "ds", files)
    budget = ScratchBudget(4 * PACK)
    with pytest.raises(Exception, match="injected outage"):
        await uploader.copy_recovery_point(
            pool, rp, vault, tmp_path / "scratch", budget, pack_size=PACK, parallelism=1
        )
    log(f"after: {[p.name[:6] for p in (tmp_path / 'scratch').iterdir()]} in_use={budget.in_use}")
    await asyncio.sleep(1)
    log(f"later: {[p.name[:6] for p in (tmp_path / 'scratch').iterdir()]} in_use={budget.in_use}")
    print("\n".join(LOG))
    assert not list((tmp_path / "scratch").iterdir()) and budget.in_use == 0
    await vault.close()
