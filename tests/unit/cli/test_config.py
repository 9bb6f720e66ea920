"""Where the CLI finds server, token and CA (server/cli/config.py)."""

import io
from pathlib import Path

import pytest

from server.cli.config import cli_config_path, normalise_server_url, resolve_connection
from server.cli.errors import UsageError

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def write_config(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        ("backup01:8443", "https://backup01:8443"),
        ("https://backup01:8443/", "https://backup01:8443"),
        ("https://backup01:8443/api/v1/", "https://backup01:8443"),
        ("http://127.0.0.1:9", "http://127.0.0.1:9"),
    ],
)
def test_normalise_server_url(raw: str, url: str) -> None:
    assert normalise_server_url(raw) == url


def test_bad_server_url_is_usage_error() -> None:
    with pytest.raises(UsageError, match="not an http"):
        normalise_server_url("ftp://x")


def test_config_path_order(tmp_path: Path) -> None:
    assert cli_config_path({"STOCKADE_CLI_CONFIG": str(tmp_path / "c.toml")}) == tmp_path / "c.toml"


def test_parameters_beat_environment(tmp_path: Path) -> None:
    env = {"STOCKADE_SERVER": "env:1", "STOCKADE_TOKEN": "env-token"}
    conn = resolve_connection(server="param:2", token="param-token", ca_file=None, environ=env)
    assert (conn.server_url, conn.token, conn.ca_pem) == ("https://param:2", "param-token", None)
    conn = resolve_connection(server=None, token=None, ca_file=None, environ=env)
    assert (conn.server_url, conn.token) == ("https://env:1", "env-token")


def test_cli_config_supplies_everything_and_warns_when_readable(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text(PEM, encoding="ascii")
    config = write_config(
        tmp_path / "cli.toml",
        'server_url = "https://127.0.0.1:8443"\ntoken = "file-token"\nca_file = "ca.pem"\n',
        mode=0o644,
    )
    err = io.StringIO()
    conn = resolve_connection(
        server=None, token=None, ca_file=None, environ={"STOCKADE_CLI_CONFIG": str(config)}, err=err
    )
    assert (conn.server_url, conn.token, conn.ca_pem) == (
        "https://127.0.0.1:8443",
        "file-token",
        PEM,
    )
    assert "readable by group or others (mode 0644)" in err.getvalue()
    assert f"chmod 600 {config}" in err.getvalue()


def test_cli_config_with_inline_pem_and_tight_mode_is_quiet(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "cli.toml",
        f'server_url = "https://127.0.0.1:8443"\ntoken = "t"\nca_file = """{PEM}"""\n',
    )
    err = io.StringIO()
    conn = resolve_connection(
        server=None, token=None, ca_file=None, environ={"STOCKADE_CLI_CONFIG": str(config)}, err=err
    )
    assert conn.ca_pem == PEM
    assert err.getvalue() == ""


def test_config_token_is_not_sent_to_another_server(tmp_path: Path) -> None:
    """The local server's token must not leak to a server named by -Server."""
    config = write_config(tmp_path / "cli.toml", 'server_url = "https://local:8443"\ntoken = "t"\n')
    env = {"STOCKADE_CLI_CONFIG": str(config)}
    with pytest.raises(UsageError, match="no operator token for https://elsewhere:8443"):
        resolve_connection(server="elsewhere:8443", token=None, ca_file=None, environ=env)
    conn = resolve_connection(server="https://local:8443/", token=None, ca_file=None, environ=env)
    assert conn.token == "t"


def test_nothing_configured_names_the_config_path(tmp_path: Path) -> None:
    env = {"STOCKADE_CLI_CONFIG": str(tmp_path / "missing.toml")}
    with pytest.raises(UsageError, match=r"no server: pass -Server .*missing\.toml"):
        resolve_connection(server=None, token=None, ca_file=None, environ=env)


def test_bad_toml_and_bad_ca_file_are_usage_errors(tmp_path: Path) -> None:
    config = write_config(tmp_path / "cli.toml", "server_url = [")
    with pytest.raises(UsageError, match="not valid TOML"):
        resolve_connection(
            server=None, token=None, ca_file=None, environ={"STOCKADE_CLI_CONFIG": str(config)}
        )
    (tmp_path / "not-a-cert.pem").write_text("hello", encoding="ascii")
    with pytest.raises(UsageError, match=r"holds no PEM certificate"):
        resolve_connection(
            server="h:1", token="t", ca_file=str(tmp_path / "not-a-cert.pem"), environ={}
        )
    with pytest.raises(UsageError, match=r"cannot read the CA file .*nope\.pem \(-CaFile\)"):
        resolve_connection(server="h:1", token="t", ca_file=str(tmp_path / "nope.pem"), environ={})
