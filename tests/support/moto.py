"""A real moto server (an S3 test double) for tests.

moto lives in its own virtualenv, ``.tools/moto-venv`` (``make test-tools``): installed next
to aiobotocore it would upgrade botocore past aiobotocore's exact pin. Missing: the test is
skipped, or fails under ``CI=true``. moto keeps state in memory; it does not check
credentials or Content-MD5, and reports every multipart upload as started in 2010.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.support.mqtt import free_port
from tests.support.service_process import ServiceProcess, fail_or_skip

__all__ = ["ACCESS_KEY", "MOTO_BIN", "SECRET_KEY", "Moto", "require_moto"]

REPO = Path(__file__).resolve().parents[2]
MOTO_BIN = REPO / ".tools" / "moto-venv" / "bin" / "moto_server"
# moto accepts any credentials; these only have to look like AWS ones.
ACCESS_KEY = "AKIAMOTOTESTKEY00000"
SECRET_KEY = "moto-test-secret-key-not-a-secret-00000000"


def require_moto() -> Path:
    if not os.access(MOTO_BIN, os.X_OK):
        fail_or_skip(f"moto_server is not installed at {MOTO_BIN} (run: make test-tools)")
    return MOTO_BIN


class Moto(ServiceProcess):
    """One moto_server process on 127.0.0.1:``port``."""

    name = "moto_server"

    def __init__(self, port: int | None = None) -> None:
        super().__init__(require_moto(), "127.0.0.1", port or free_port())

    def argv(self) -> list[str]:
        return [str(self.binary), "-H", self.host, "-p", str(self.port)]

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def probe(self) -> bool:
        # Flask answers only once the app is loaded; the TCP accept comes earlier.
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            return False
        try:
            writer.write(b"GET /moto-api/ HTTP/1.0\r\nHost: localhost\r\n\r\n")
            await writer.drain()
            status = await reader.readline()
        finally:
            writer.close()
            await writer.wait_closed()
        return status.startswith(b"HTTP/")
