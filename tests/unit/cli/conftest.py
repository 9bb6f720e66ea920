"""Fixtures for the CLI tests: a clean environment, the fake API, and running ``main``."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.cli.main import main
from tests.support.stack import CliResult
from tests.unit.cli.fake_api import TOKEN, FakeApi, running_fake_api


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No STOCKADE_* from the caller, and a CLI config path that does not exist yet
    (never the real /var/lib/stockade/cli.toml of the machine running the tests)."""
    for name in ("STOCKADE_SERVER", "STOCKADE_TOKEN", "STOCKADE_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STOCKADE_CLI_CONFIG", str(tmp_path / "cli.toml"))


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with running_fake_api() as fake:
        yield fake


Result = CliResult  # one CLI result shape for in-process and subprocess runs


@dataclass
class Cli:
    """Runs ``main(argv)`` in-process; ``connect`` adds -Server/-Token for the fake API."""

    capsys: pytest.CaptureFixture[str]
    server: str = ""

    def __call__(self, *argv: str, connect: bool = True) -> Result:
        args = list(argv)
        if connect and self.server:
            args += ["-Server", self.server, "-Token", TOKEN]
        self.capsys.readouterr()
        code = main(args)
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


@pytest.fixture
def api_cli(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys, api.url)
