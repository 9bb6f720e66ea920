"""Agent settings (``agent.toml``) and identity (``identity.json``).

Settings: ``[agent]`` in a TOML file read with tomllib into :class:`AgentConfig`, validated
at start-up. Unknown keys and bad values raise :class:`ConfigError` naming the file, the key
and what is allowed; the daemon exits with :data:`EXIT_CONFIG` (78) on it, which the unit's
``RestartPreventExitStatus=78`` honours. ``config/agent.example.toml`` lists every key with
its default and loads to :func:`load_agent_config` ``(None)``.

Identity: what ``stockade-agent register`` receives from the server, in a JSON file holding
secrets (the credential and the command key). The contract:

* :func:`save_identity` writes a temp file (mode 0600, ``O_EXCL``) in the target directory,
  fsyncs it, renames it over the target and fsyncs the directory: a crash leaves the old
  identity or the new one, never a torn file. The directory is created 0700 and tightened
  to 0700 if it was wider; as root it is made root's.
* :func:`load_identity` refuses a file that group or others may read, or that another user
  owns (whoever can rewrite it can point a root agent at their own server), and a file in
  a directory others may write. A missing file raises :class:`NotRegisteredError`.
  Both are :class:`ConfigError`: the daemon exits 78 rather than restart in a loop.
"""

import json
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from agent.protocol import AGENT_ID_PATTERN

__all__ = [
    "DEFAULTS_SOURCE",
    "EXIT_CONFIG",
    "IDENTITY_SCHEMA",
    "LOG_LEVELS",
    "AgentConfig",
    "AgentIdentity",
    "ConfigError",
    "IdentityError",
    "NotRegisteredError",
    "default_state_dir",
    "load_agent_config",
    "load_identity",
    "save_identity",
]

EXIT_CONFIG: Final = 78  # sysexits.h EX_CONFIG; the unit sets RestartPreventExitStatus=78
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
DEFAULTS_SOURCE: Final = "<embedded defaults>"
IDENTITY_SCHEMA: Final = "stockade.agent-identity/1"
MIB: Final = 1024 * 1024

_COMMAND_KEY_HEX: Final = re.compile(r"(?:[0-9a-f]{2}){32,}")  # at least 256 bits


class ConfigError(ValueError):
    """Agent settings or identity unusable; ``source`` is the file, ``key`` the dotted key."""

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


class IdentityError(ConfigError):
    """The identity file is unsafe or malformed."""


class NotRegisteredError(IdentityError):
    """No identity file: this agent has not been registered with a server yet."""


def default_state_dir(*, euid: int | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """``/var/lib/stockade-agent`` for root, else ``~/.local/share/stockade-agent``."""
    if (os.geteuid() if euid is None else euid) == 0:
        return Path("/var/lib/stockade-agent")
    env = os.environ if environ is None else environ
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "share" / "stockade-agent"


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class AgentConfig:
    """``[agent]`` of ``agent.toml``. ``source`` (not compared) names where it came from."""

    state_dir: Path = field(default_factory=default_state_dir)
    log_level: str = "info"
    upload_parallelism: int = 4
    chunk_batch_bytes: int = 16 * MIB
    identity_file: Path | None = None
    source: str = field(default=DEFAULTS_SOURCE, compare=False)

    @property
    def identity_path(self) -> Path:
        """``identity_file``, else ``state_dir/identity.json``."""
        return self.identity_file or self.state_dir / "identity.json"


# key -> (lowest, highest) for the integer keys
_INT_RANGES: Final = {"upload_parallelism": (1, 64), "chunk_batch_bytes": (MIB, 1024 * MIB)}
_PATH_KEYS: Final = ("state_dir", "identity_file")
_KEYS: Final = tuple(f.name for f in fields(AgentConfig) if f.name != "source")


def load_agent_config(
    path: Path | None, *, overrides: Mapping[str, str] | None = None
) -> AgentConfig:
    """Read and validate ``path`` (``None``: embedded defaults), then apply ``overrides``
    (``{"agent.log_level": "debug"}``). Raises :class:`ConfigError`."""
    source = DEFAULTS_SOURCE if path is None else str(path)
    raw = {} if path is None else _read_toml(path)
    for name, table in raw.items():
        if name != "agent":
            raise ConfigError(source, name, "unknown section; the only section is [agent]")
        if not isinstance(table, dict):
            raise ConfigError(source, name, "must be a table ([agent])")

    given: dict[str, tuple[str, object]] = {
        key: (source, value) for key, value in raw.get("agent", {}).items()
    }
    for dotted, text in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if section != "agent":
            raise ConfigError("override", dotted, "unknown key; allowed: agent.KEY")
        value: object = text
        if key in _INT_RANGES and re.fullmatch(r"[+-]?[0-9]+", text):
            value = int(text, 10)  # else _parse names the key and the expected range
        given[key] = ("override", value)

    kwargs: dict[str, Any] = {}
    for key, (where, value) in given.items():
        parsed = _parse(where, key, value)
        if parsed is not None:
            kwargs[key] = parsed
    return AgentConfig(**kwargs, source=source)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(path), None, "no such file") from None
    except OSError as err:
        raise ConfigError(str(path), None, f"cannot read: {err.strerror or err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(path), None, f"not valid TOML: {err}") from err


def _parse(source: str, key: str, value: object) -> object:
    dotted = f"agent.{key}"

    def bad(allowed: str) -> ConfigError:
        return ConfigError(source, dotted, f"{value!r} is not allowed; expected {allowed}")

    if key not in _KEYS:
        allowed = ", ".join(_KEYS)
        raise ConfigError(source, dotted, f"unknown key; allowed keys in [agent]: {allowed}")
    if key in _INT_RANGES:
        lo, hi = _INT_RANGES[key]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise bad(f"an integer from {lo} to {hi}")
        return value
    if not isinstance(value, str):
        raise bad("a string")
    if key in _PATH_KEYS:
        if value == "":
            return None  # keep the default
        if not Path(value).is_absolute():
            raise bad('an absolute path, or "" for the default')
        return Path(value)
    if value not in LOG_LEVELS:  # log_level, the only other key
        raise bad("one of " + ", ".join(LOG_LEVELS))
    return value


# --------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class AgentIdentity:
    """Who this agent is and whom it trusts. Secrets stay out of ``repr``."""

    agent_id: str
    credential: str = field(repr=False)  # authenticates the agent to the broker and HTTP API
    server_url: str  # https://host:port of the server's data plane
    mqtt_url: str  # mqtts://host:port (or mqtt://) of the broker
    ca_pem: str = field(repr=False)  # PEM CA(s) to verify both; "" = the system CAs
    command_key: str = field(repr=False)  # hex HMAC key that signs server commands
    # The broker password; a server with a managed broker derives it per agent and hands
    # it out at registration. "" means the credential (an external broker set up that way).
    mqtt_password: str = field(default="", repr=False)

    @property
    def broker_password(self) -> str:
        return self.mqtt_password or self.credential

    @property
    def command_key_bytes(self) -> bytes:
        return bytes.fromhex(self.command_key)


def _identity_problem(identity: AgentIdentity) -> tuple[str, str] | None:
    """(key, what is expected) for the first bad field, or None."""
    if AGENT_ID_PATTERN.fullmatch(identity.agent_id) is None:
        return "agent_id", "1-64 of [A-Za-z0-9_-]"
    if not identity.credential:
        return "credential", "a non-empty string"
    if not _url_ok(identity.server_url, ("https",)):
        return "server_url", "https://host[:port]"
    if not _url_ok(identity.mqtt_url, ("mqtts", "mqtt")):
        return "mqtt_url", "mqtts://host:port or mqtt://host:port"
    if identity.ca_pem and "-----BEGIN CERTIFICATE-----" not in identity.ca_pem:
        return "ca_pem", 'PEM certificates, or "" for the system CAs'
    if _COMMAND_KEY_HEX.fullmatch(identity.command_key) is None:
        return "command_key", "lower-case hex of at least 32 bytes"
    return None


def _url_ok(url: str, schemes: tuple[str, ...]) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return parts.scheme in schemes and bool(parts.hostname)


def save_identity(path: Path, identity: AgentIdentity) -> None:
    """Atomically write ``identity`` to ``path`` (0600, in a 0700 directory).

    Raises :class:`IdentityError` for an invalid identity (nothing is written) and
    ``OSError`` when the disk says no.
    """
    if (problem := _identity_problem(identity)) is not None:
        key, expected = problem
        raise IdentityError(str(path), key, f"invalid value; expected {expected}")
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.geteuid() == 0 and directory.stat().st_uid != 0:
        os.chown(directory, 0, 0)
    os.chmod(directory, 0o700)

    document = {
        "schema": IDENTITY_SCHEMA,
        **{f.name: getattr(identity, f.name) for f in fields(identity)},
    }
    data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")
    tmp = directory / f".{path.name}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask may have narrowed it further; say it exactly
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_identity(path: Path) -> AgentIdentity:
    """Read the identity at ``path``; raises :class:`NotRegisteredError` when it is missing
    and :class:`IdentityError` when it is unsafe or malformed."""
    source = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotRegisteredError(
            source, None, "not registered: run stockade-agent register --server URL --token T"
        ) from None
    except OSError as err:
        raise IdentityError(source, None, f"cannot read: {err.strerror or err}") from err
    with os.fdopen(fd, "rb") as fh:
        _check_private(path, os.fstat(fh.fileno()))
        raw = fh.read()
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IdentityError(source, None, f"not valid JSON: {err}") from err
    if not isinstance(document, dict) or document.get("schema") != IDENTITY_SCHEMA:
        raise IdentityError(source, "schema", f"expected {IDENTITY_SCHEMA!r}; register again")
    names = [f.name for f in fields(AgentIdentity)]
    values: dict[str, str] = {}
    for name in names:
        value = document.get(name, "" if name == "mqtt_password" else None)
        if not isinstance(value, str):
            raise IdentityError(source, name, "missing or not a string; register again")
        values[name] = value
    identity = AgentIdentity(**values)
    if (problem := _identity_problem(identity)) is not None:
        key, expected = problem
        raise IdentityError(source, key, f"invalid value; expected {expected}; register again")
    return identity


def _check_private(path: Path, st: os.stat_result) -> None:
    source = str(path)
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        raise IdentityError(source, None, "not a regular file")
    if st.st_uid != os.geteuid():
        raise IdentityError(
            source,
            None,
            f"owned by uid {st.st_uid}, not by this process (uid {os.geteuid()}); whoever "
            f"owns it can redirect the agent. Fix: chown {os.geteuid()} {path}",
        )
    if mode & 0o077:
        raise IdentityError(
            source,
            None,
            f"mode {mode:04o} lets group or others read the agent's credential; "
            f"fix: chmod 600 {path}",
        )
    dir_mode = stat.S_IMODE(path.parent.stat().st_mode)
    if dir_mode & 0o022:
        raise IdentityError(
            source,
            None,
            f"its directory {path.parent} (mode {dir_mode:04o}) is writable by group or "
            f"others, who could replace the identity; fix: chmod 700 {path.parent}",
        )
