"""Where the CLI finds the server, the operator token and the CA to trust.

Resolution, per setting:

* server URL: ``-Server``, else ``STOCKADE_SERVER``, else ``server_url`` of the CLI config;
* token: ``-Token``, else ``STOCKADE_TOKEN``, else ``token`` of the CLI config;
* CA: ``-CaFile``, else ``STOCKADE_CA_FILE``, else ``ca_file`` of the CLI config, else the
  system trust store.

The CLI config is read only when it is needed (a setting is missing), and its token and CA
are used only for the server it names: an operator who points ``-Server`` elsewhere must not
send the local server's token there. The config is TOML written by the server for local
operators: ``$STOCKADE_CLI_CONFIG``, else ``/var/lib/stockade/cli.toml`` for root, else
``~/.local/share/stockade/cli.toml``; keys ``server_url``, ``token``, ``ca_file`` (a path to
a PEM file, relative to the config's directory, or the PEM text itself). A config readable by
group or others draws a warning on stderr (it holds a token) but is still used.
"""

import os
import stat
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO
from urllib.parse import urlsplit

from server.cli.errors import UnreachableError, UsageError

__all__ = [
    "ENV_CA_FILE",
    "ENV_CLI_CONFIG",
    "ENV_SERVER",
    "ENV_TOKEN",
    "Connection",
    "cli_config_path",
    "normalise_server_url",
    "resolve_connection",
]

ENV_SERVER: Final = "STOCKADE_SERVER"
ENV_TOKEN: Final = "STOCKADE_TOKEN"
ENV_CA_FILE: Final = "STOCKADE_CA_FILE"
ENV_CLI_CONFIG: Final = "STOCKADE_CLI_CONFIG"

ROOT_CLI_CONFIG: Final = Path("/var/lib/stockade/cli.toml")
API_PREFIX: Final = "/api/v1"


@dataclass(frozen=True, slots=True)
class Connection:
    """How to reach the API: ``server_url`` has no trailing slash and no ``/api/v1``."""

    server_url: str
    token: str
    ca_pem: str | None  # None: the system trust store

    @property
    def api_url(self) -> str:
        return self.server_url + API_PREFIX


def cli_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """The CLI config file this process would read."""
    env = os.environ if environ is None else environ
    if env.get(ENV_CLI_CONFIG):
        return Path(env[ENV_CLI_CONFIG])
    if os.geteuid() == 0:
        return ROOT_CLI_CONFIG
    return Path.home() / ".local/share/stockade/cli.toml"


def normalise_server_url(raw: str) -> str:
    """``backup01:8443`` -> ``https://backup01:8443``; drop a trailing ``/`` or ``/api/v1``."""
    url = raw.strip()
    if "://" not in url:
        url = "https://" + url
    url = url.rstrip("/")
    if url.endswith(API_PREFIX):
        url = url[: -len(API_PREFIX)]
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise UsageError(f"server URL {raw!r} is not an http(s) URL with a host")
    return url


@dataclass(frozen=True, slots=True)
class _FileConfig:
    path: Path
    server_url: str | None
    token: str | None
    ca_file: str | None


def _read_cli_config(path: Path, err: TextIO) -> _FileConfig | None:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except PermissionError as error:
        raise UnreachableError(
            f"cannot read the CLI config {path}: permission denied "
            "(run as root, or pass -Server and -Token)"
        ) from error
    except OSError as error:
        raise UsageError(f"cannot read the CLI config {path}: {error.strerror}") from error
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        err.write(
            f"warning: {path} is readable by group or others (mode {stat.S_IMODE(mode):04o}) "
            f"and holds the operator token; run: chmod 600 {path}\n"
        )
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"the CLI config {path} is not valid TOML: {error}") from error
    values: dict[str, str | None] = {}
    for key in ("server_url", "token", "ca_file"):
        value = table.get(key)
        if value is not None and not isinstance(value, str):
            raise UsageError(f"the CLI config {path}: {key} must be a string")
        values[key] = value or None
    return _FileConfig(path, values["server_url"], values["token"], values["ca_file"])


def _load_ca(value: str, base: Path | None, origin: str) -> str:
    if value.lstrip().startswith("-----BEGIN"):
        return value
    path = Path(value).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    try:
        pem = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not an ASCII PEM file"
        raise UsageError(f"cannot read the CA file {path} ({origin}): {reason}") from error
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise UsageError(f"the CA file {path} ({origin}) holds no PEM certificate")
    return pem


def resolve_connection(
    *,
    server: str | None,
    token: str | None,
    ca_file: str | None,
    environ: Mapping[str, str] | None = None,
    err: TextIO | None = None,
) -> Connection:
    """Resolve the connection from parameters, environment and the CLI config (see above)."""
    env = os.environ if environ is None else environ
    warn_to = sys.stderr if err is None else err
    server = server or env.get(ENV_SERVER) or None
    token = token or env.get(ENV_TOKEN) or None
    ca_file, ca_origin = (ca_file, "-CaFile") if ca_file else (env.get(ENV_CA_FILE), ENV_CA_FILE)
    url = normalise_server_url(server) if server else None

    file_config: _FileConfig | None = None
    if url is None or token is None or not ca_file:
        path = cli_config_path(env)
        file_config = _read_cli_config(path, warn_to)
        if file_config is not None and file_config.server_url:
            file_url = normalise_server_url(file_config.server_url)
            if url is None:
                url = file_url
            if file_url != url:
                file_config = None  # another server: its token and CA are not for this one
        else:
            file_config = None  # names no server, so its token may not be sent anywhere
    if url is None:
        raise UsageError(
            f"no server: pass -Server URL or set {ENV_SERVER} "
            f"(on the server host, the CLI config {cli_config_path(env)} names it)"
        )
    if token is None and file_config is not None:
        token = file_config.token
    if token is None:
        raise UsageError(f"no operator token for {url}: pass -Token or set {ENV_TOKEN}")
    ca_pem: str | None = None
    if ca_file:
        ca_pem = _load_ca(ca_file, None, ca_origin)
    elif file_config is not None and file_config.ca_file:
        ca_pem = _load_ca(file_config.ca_file, file_config.path.parent, str(file_config.path))
    return Connection(server_url=url, token=token, ca_pem=ca_pem)
