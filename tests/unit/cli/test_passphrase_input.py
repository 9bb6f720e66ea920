"""Vault passphrases off the command line (server/cli/passphrase_input.py): -PassphraseFile
(first line; refused when group or others may access it), $STOCKADE_VAULT_PASSPHRASE, a
no-echo prompt on a terminal, and -Passphrase still working. Guards against passphrases in
``ps``: Register-Vault and Set-VaultPassphrase used to take them only as arguments.

The cmdlets run in-process against the fake API, which records each request's body before
answering (it has no vault routes: the 404 after the POST does not matter here)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.cli.args import parse
from server.cli.cmdlet import Invocation
from server.cli.cmdlets_vault import REGISTER_VAULT
from server.cli.errors import EXIT_USAGE, UsageError
from server.cli.passphrase_input import PASSPHRASE_ENV, Terminal, passphrase_from
from tests.unit.cli.conftest import Cli
from tests.unit.cli.fake_api import FakeApi

SECRET = "a long enough passphrase, with spaces"


@pytest.fixture(autouse=True)
def no_env_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)


@pytest.fixture
def cred(tmp_path: Path) -> Path:
    path = tmp_path / "vault.cred"
    path.write_text(json.dumps({"credentials_id": "c1"}))
    return path


def secret_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "vault.pass"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def sent_passphrase(api: FakeApi, path: str) -> object:
    return api.last("POST", path).body["passphrase"]


def test_register_reads_the_first_line_of_a_private_file(
    api: FakeApi, api_cli: Cli, tmp_path: Path, cred: Path
) -> None:
    f = secret_file(tmp_path, f"{SECRET}\r\nsecond line ignored\n")
    api_cli("Register-Vault", "-CredentialsFile", str(cred), "-PassphraseFile", str(f))
    assert sent_passphrase(api, "/vault/registration") == SECRET


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_a_file_others_may_access_is_refused_before_anything_is_sent(
    api: FakeApi, api_cli: Cli, tmp_path: Path, cred: Path, mode: int
) -> None:
    f = secret_file(tmp_path, SECRET, mode)
    result = api_cli("Register-Vault", "-CredentialsFile", str(cred), "-PassphraseFile", str(f))
    assert result.code == EXIT_USAGE, result
    assert f"accessible by group or others (mode {mode:04o})" in result.err
    assert f"chmod 600 {f}" in result.err
    assert not [r for r in api.requests if r.method == "POST"]


def test_empty_or_missing_files_are_refused(api_cli: Cli, tmp_path: Path, cred: Path) -> None:
    empty = secret_file(tmp_path, "\nnot the first line\n")
    result = api_cli("Register-Vault", "-CredentialsFile", str(cred), "-PassphraseFile", str(empty))
    assert result.code == EXIT_USAGE and "first line" in result.err and "is empty" in result.err
    missing = tmp_path / "nope"
    result = api_cli("Set-VaultPassphrase", "-PassphraseFile", str(missing), "-SecurityPin", "1")
    assert result.code == EXIT_USAGE and f"cannot read passphrase file {missing}" in result.err


def test_the_environment_variable_is_used(
    api: FakeApi, api_cli: Cli, cred: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, SECRET)
    api_cli("Register-Vault", "-CredentialsFile", str(cred))
    assert sent_passphrase(api, "/vault/registration") == SECRET
    api_cli("Set-VaultPassphrase", "-SecurityPin", "12345678")
    assert sent_passphrase(api, "/vault/passphrase") == SECRET
    # -GeneratePassphrase is explicit: the variable does not override it.
    api_cli("Register-Vault", "-CredentialsFile", str(cred), "-GeneratePassphrase")
    body = api.last("POST", "/vault/registration").body
    assert body.get("generate_passphrase") is True and "passphrase" not in body


def test_file_wins_over_the_environment_and_the_argument_still_works(
    api: FakeApi, api_cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "from the environment, long")
    f = secret_file(tmp_path, SECRET)
    api_cli("Set-VaultPassphrase", "-PassphraseFile", str(f), "-SecurityPin", "1")
    assert sent_passphrase(api, "/vault/passphrase") == SECRET
    api_cli("Set-VaultPassphrase", "-Passphrase", "on the command line", "-SecurityPin", "1")
    assert sent_passphrase(api, "/vault/passphrase") == "on the command line"


def test_no_source_and_no_terminal_says_what_to_give(api_cli: Cli, cred: Path) -> None:
    result = api_cli("Register-Vault", "-CredentialsFile", str(cred))
    assert result.code == EXIT_USAGE
    assert "-PassphraseFile" in result.err and PASSPHRASE_ENV in result.err
    result = api_cli("Set-VaultPassphrase", "-SecurityPin", "1")
    assert result.code == EXIT_USAGE and "needs the new passphrase" in result.err
    both = api_cli(
        "Register-Vault", "-CredentialsFile", str(cred), "-Passphrase", SECRET,
        "-PassphraseFile", str(cred),
    )  # fmt: skip
    assert both.code == EXIT_USAGE and "not both" in both.err
    generated = api_cli(
        "Register-Vault", "-CredentialsFile", str(cred), "-GeneratePassphrase", "-Passphrase", "x"
    )
    assert generated.code == EXIT_USAGE and "drop -Passphrase" in generated.err


class Typist:
    """A terminal whose user types `answers` in turn (the no-echo prompt's stand-in)."""

    def __init__(self, *answers: str) -> None:
        self.answers: Iterator[str] = iter(answers)
        self.prompts: list[str] = []

    def ask(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return next(self.answers)


def invocation(*argv: str) -> Invocation:
    args = parse(REGISTER_VAULT.name, REGISTER_VAULT.params, ["-CredentialsFile", "c", *argv])
    return Invocation(REGISTER_VAULT.name, args, io.StringIO(), io.StringIO(), {})


def test_a_terminal_is_asked_twice_without_echo() -> None:
    typist = Typist(SECRET, SECRET)
    assert passphrase_from(invocation(), terminal=Terminal(lambda: True, typist.ask)) == SECRET
    assert typist.prompts == ["vault passphrase: ", "vault passphrase again: "]
    with pytest.raises(UsageError, match="differ"):
        passphrase_from(invocation(), terminal=Terminal(lambda: True, Typist(SECRET, "x").ask))
    # No terminal: no question, None (the cmdlet then says what to give).
    assert passphrase_from(invocation(), terminal=Terminal(lambda: False, Typist().ask)) is None
