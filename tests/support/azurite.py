"""A real Azurite (the Azure Storage emulator) for tests.

Azurite is installed by ``make test-tools`` into ``.tools/azurite`` (a pinned npm package).
Missing: the test is skipped, or fails under ``CI=true``. Each `Azurite` runs in memory on
a free loopback port; `stop` then `start` again (same port, data lost) serve fault tests
that take the service away mid-job.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.mqtt import free_port
from tests.support.service_process import ServiceProcess, fail_or_skip

__all__ = ["ACCOUNT", "ACCOUNT_KEY", "AZURITE_BIN", "Azurite", "require_azurite"]

REPO = Path(__file__).resolve().parents[2]
AZURITE_BIN = REPO / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
# Azurite's fixed, public development key (documented by Microsoft; not a secret).
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def require_azurite() -> Path:
    if not os.access(AZURITE_BIN, os.X_OK):
        fail_or_skip(f"Azurite is not installed at {AZURITE_BIN} (run: make test-tools)")
    return AZURITE_BIN


class Azurite(ServiceProcess):
    """One azurite-blob process on 127.0.0.1:``port``, in memory."""

    name = "azurite-blob"

    def __init__(self, port: int | None = None) -> None:
        super().__init__(require_azurite(), "127.0.0.1", port or free_port())

    def argv(self) -> list[str]:
        # --skipApiVersionCheck: azure-storage-blob sends an API version newer than
        # Azurite 3.35 knows (../shared/COMPONENTS.md).
        return [
            str(self.binary),
            "--blobHost",
            self.host,
            "--blobPort",
            str(self.port),
            "--inMemoryPersistence",
            "--extentMemoryLimit",
            "1024",
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ]

    @property
    def blob_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{ACCOUNT}"

    def connection_string(self, key: str = ACCOUNT_KEY, port: int | None = None) -> str:
        """The dev account's connection string; ``port`` points it elsewhere (a proxy)."""
        endpoint = f"http://{self.host}:{port or self.port}/{ACCOUNT}"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
            f"BlobEndpoint={endpoint};"
        )


class PersistentAzurite(Azurite):
    """Azurite keeping its blobs under `location`: a restart on the same port finds them,
    so "the cloud came back" finds the vault it left."""

    def __init__(self, location: Path, port: int | None = None) -> None:
        super().__init__(port)
        self.location = location

    def argv(self) -> list[str]:
        argv = super().argv()
        # --extentMemoryLimit (and its value) only applies to in-memory persistence.
        j = argv.index("--extentMemoryLimit")
        del argv[j : j + 2]
        i = argv.index("--inMemoryPersistence")
        argv[i : i + 1] = ["--location", str(self.location)]
        return argv
