"""One test service process (Azurite, moto server): start, wait until ready, stop.

The process runs in its own session on a loopback port; its output goes to a temp file,
not a pipe, so a chatty service (moto logs every request) never stalls on a full pipe.
Processes are started with Popen in a thread, so a module-scoped fixture may start one
under one event loop and a test may stop and restart it under another.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
from pathlib import Path
from typing import IO, NoReturn

import pytest

__all__ = ["ServiceProcess", "fail_or_skip"]

READY_TIMEOUT = 30.0


def fail_or_skip(message: str) -> NoReturn:
    """Skip locally; under CI=true a missing service is a failure (CI must run it)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true, so this is a failure", pytrace=False)
    pytest.skip(message)


class ServiceProcess:
    name = "service"

    def __init__(self, binary: Path, host: str, port: int) -> None:
        self.binary = binary
        self.host = host
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as self)

    def argv(self) -> list[str]:
        raise NotImplementedError

    async def probe(self) -> bool:
        """True once the service answers (called after a TCP connect succeeded)."""
        return True

    async def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError(f"{self.name} is already running")
        self._proc = await asyncio.to_thread(
            subprocess.Popen,
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while loop.time() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"{self.name} exited at start: {self.log_tail()}")
            try:
                _reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            if await self.probe():
                return
            await asyncio.sleep(0.05)
        await self.stop()
        raise RuntimeError(f"{self.name} not ready on port {self.port} in {READY_TIMEOUT}s")

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, limit: int = 4000) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-limit:].strip()

    def close_log(self) -> None:
        self._log.close()
