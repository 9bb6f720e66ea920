"""Server settings: ``server.toml`` read with tomllib into frozen dataclasses.

Contract:

* :func:`load_server_config` validates everything at start-up and raises
  :class:`ConfigError` (a ``ValueError``) naming the file, the dotted key and what is allowed.
  Unknown sections and keys are errors, not warnings: a typo must not silently fall back to
  a default. The daemons exit with :data:`EXIT_CONFIG` (78, ``EX_CONFIG``) on it, so the
  systemd unit's ``RestartPreventExitStatus=78`` stops a restart loop.
* ``path=None`` gives the embedded defaults; ``config/server.example.toml`` documents every
  key with its default and loads to the same value (a test checks it).
* ``overrides`` (``{"http.port": "9443"}``, e.g. from the command line) are applied over the
  file and validated the same way, with ``override`` as the source in errors.
* Paths must be absolute; ``""`` means "the default" (derived from ``server.data_dir``).
* Secrets are never in this file: ``broker.password_file`` and ``http.tls_key`` name files
  with tight permissions.

On SIGHUP the daemon loads the file again and calls :func:`reload_diff`: only the keys in
:data:`LIVE_KEYS` take effect without a restart; :func:`merge_live` builds the config to
run with (the old one with only the live keys replaced).
"""

import dataclasses
import enum
import ipaddress
import os
import re
import socket
import tomllib
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Final, get_args, get_type_hints
from urllib.parse import urlsplit

from storage_pool.pool import Durability

__all__ = [
    "DEFAULTS_SOURCE",
    "EXIT_CONFIG",
    "LIVE_KEYS",
    "LOG_LEVELS",
    "OVERRIDE_SOURCE",
    "AgentsSettings",
    "AlertsSettings",
    "BrokerSettings",
    "ConfigError",
    "HttpSettings",
    "JobsSettings",
    "OnlineSettings",
    "PoolSettings",
    "SchedulerSettings",
    "ScratchSettings",
    "ServerConfig",
    "ServerSettings",
    "default_data_dir",
    "load_server_config",
    "merge_live",
    "reload_diff",
]

EXIT_CONFIG: Final = 78  # sysexits.h EX_CONFIG; the units set RestartPreventExitStatus=78
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
DEFAULTS_SOURCE: Final = "<embedded defaults>"
OVERRIDE_SOURCE: Final = "override"

# Keys a SIGHUP changes in place. Everything else (ports, paths, TLS, broker) is bound to
# open sockets, files or a child process and needs a restart.
LIVE_KEYS: Final[frozenset[str]] = frozenset(
    {
        "server.log_level",
        "jobs.max_concurrent_backups",
        "jobs.agent_wait_seconds",
        "jobs.job_history_days",
        "jobs.retry_attempts",
        "jobs.retry_backoff_seconds",
        "pool.reserve_bytes",
        "pool.reserve_percent",
        "scheduler.missed_grace_seconds",
        "scheduler.maintenance_interval_minutes",
        "scheduler.gc_interval_hours",
        "alerts.webhook_url",
        "alerts.rpo_grace_minutes",
        "alerts.agent_offline_minutes",
        "alerts.pool_warning_percent",
        "alerts.pool_critical_percent",
        "agents.heartbeat_seconds",
        "agents.offline_after_seconds",
        "online.retry_budget_seconds",
        "cloud.probe_interval_minutes",
        "cloud.lost_after_days",
        "cloud.rejections_to_change_state",
        "cloud.lost_stops_disk_backups",
    }
)


class ConfigError(ValueError):
    """A configuration file or override is unreadable or invalid.

    ``source`` is the file path (or :data:`OVERRIDE_SOURCE` / :data:`DEFAULTS_SOURCE`),
    ``key`` the dotted key (``"http.port"``) or ``None`` for a whole-file problem.
    """

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


def default_data_dir(*, euid: int | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """``/var/lib/stockade`` for root, else ``$XDG_DATA_HOME/stockade`` or
    ``~/.local/share/stockade`` (``euid``/``environ`` default to this process's)."""
    env = os.environ if environ is None else environ
    if (os.geteuid() if euid is None else euid) == 0:
        return Path("/var/lib/stockade")
    xdg = env.get("XDG_DATA_HOME", "")
    # The XDG spec says to ignore a relative XDG_DATA_HOME.
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "stockade"
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "share" / "stockade"


# --------------------------------------------------------------------------- value checks
# A check returns None when the value is fine, else what is allowed (for the error message).

Check = Callable[[str], str | None]

_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9-]{1,63})*"
)
_BROKER_USER = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return _HOSTNAME.fullmatch(value) is not None
    return True


def _check_host(value: str) -> str | None:
    return None if _is_host(value) else "an IP address or a host name"


def _check_url(schemes: tuple[str, ...], *, port_required: bool) -> Check:
    shape = " or ".join(f"{s}://host:port" for s in schemes)

    def check(value: str) -> str | None:
        if value == "":
            return None
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            return f'"" or {shape}'
        host = parts.hostname or ""
        extra = parts.path not in ("", "/") or parts.query or parts.fragment or parts.username
        if parts.scheme not in schemes or not _is_host(host) or extra:
            return f'"" or {shape}'
        if port_required and port is None:
            return f'"" or {shape} (with a port)'
        return None

    return check


def _check_webhook(value: str) -> str | None:
    if value == "":
        return None
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return '"" or an http(s)://host[:port]/path URL'
    if parts.scheme not in ("http", "https") or not _is_host(host):
        return '"" or an http(s)://host[:port]/path URL'
    return None


def _check_timezone(value: str) -> str | None:
    if value == "":
        return None
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return '"" (the system\'s zone) or an IANA time zone such as "UTC" or "Europe/Paris"'
    return None


def _check_broker_user(value: str) -> str | None:
    ok = _BROKER_USER.fullmatch(value) is not None
    return None if ok else "1-64 of [A-Za-z0-9_.-] (an MQTT user name without / + #)"


def _check_program(value: str) -> str | None:
    if value and (("/" not in value) or Path(value).is_absolute()):
        return None
    return "a program name looked up in PATH, or an absolute path"


def _rule(
    *,
    lo: int | None = None,
    hi: int | None = None,
    choices: tuple[str, ...] | None = None,
    check: Check | None = None,
) -> dict[str, Any]:
    """Field metadata read by :func:`_parse`: an integer range, a choice list or a check."""
    return {"lo": lo, "hi": hi, "choices": choices, "check": check}


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class ServerSettings:
    """``[server]``: where everything lives, logging, shutdown."""

    data_dir: Path = field(default_factory=default_data_dir)
    log_level: str = field(default="info", metadata=_rule(choices=LOG_LEVELS))
    shutdown_grace_seconds: int = field(default=30, metadata=_rule(lo=0, hi=3600))


@dataclass(frozen=True)
class HttpSettings:
    """``[http]``: the HTTPS listener for agents, the CLI and the REST API."""

    listen_host: str = field(default="0.0.0.0", metadata=_rule(check=_check_host))
    port: int = field(default=8443, metadata=_rule(lo=1, hi=65535))
    public_url: str = field(
        default="", metadata=_rule(check=_check_url(("https",), port_required=False))
    )
    tls_cert: Path | None = None
    tls_key: Path | None = None


@dataclass(frozen=True)
class BrokerSettings:
    """``[broker]``: the MQTT broker, managed (our own Mosquitto) or external."""

    url: str = field(
        default="", metadata=_rule(check=_check_url(("mqtts", "mqtt"), port_required=True))
    )
    managed_host: str = field(default="0.0.0.0", metadata=_rule(check=_check_host))
    managed_port: int = field(default=8883, metadata=_rule(lo=1, hi=65535))
    mosquitto: str = field(default="mosquitto", metadata=_rule(check=_check_program))
    username: str = field(default="stockade-server", metadata=_rule(check=_check_broker_user))
    password_file: Path | None = None
    ca_file: Path | None = None

    @property
    def managed(self) -> bool:
        """True when the server starts and supervises its own Mosquitto."""
        return self.url == ""


@dataclass(frozen=True)
class PoolSettings:
    """``[pool]``: the storage pool (first copy)."""

    path: Path | None = None
    durability: Durability = Durability.FILESYSTEM
    io_workers: int = field(default=4, metadata=_rule(lo=1, hi=64))
    # New backups are refused while free space is under max(reserve_bytes, reserve_percent).
    reserve_bytes: int = field(default=2 << 30, metadata=_rule(lo=0, hi=1 << 50))
    reserve_percent: int = field(default=2, metadata=_rule(lo=0, hi=50))


@dataclass(frozen=True)
class ScratchSettings:
    """``[scratch]``: staging area on the way to the vault."""

    path: Path | None = None
    # The bound on scratch usage: bound_percent of the protected data (the latest disk RP
    # of every protected data source), at least min_bytes; max_bytes > 0 caps it.
    bound_percent: int = field(default=5, metadata=_rule(lo=1, hi=100))
    min_bytes: int = field(default=1 << 30, metadata=_rule(lo=1 << 20, hi=1 << 50))
    max_bytes: int = field(default=0, metadata=_rule(lo=0, hi=1 << 50))


@dataclass(frozen=True)
class OnlineSettings:
    """``[online]``: online backup jobs (copies of disk RPs into the vault)."""

    parallelism: int = field(default=4, metadata=_rule(lo=1, hi=64))
    pack_mib: int = field(default=32, metadata=_rule(lo=1, hi=1024))
    # How long a job retries transient vault errors (outage, throttling) before failing.
    retry_budget_seconds: int = field(default=300, metadata=_rule(lo=1, hi=86400))


@dataclass(frozen=True)
class CloudSettings:
    """``[cloud]``: the connectivity monitor and the vault-state policy (DESIGN.md table)."""

    probe_interval_minutes: int = field(default=5, metadata=_rule(lo=1, hi=1440))
    lost_after_days: int = field(default=15, metadata=_rule(lo=1, hi=365))
    # Consecutive rejections (credential refused, container gone) before the vault state
    # turns expired or deprovisioned: one stray 403/404 must not delete online RPs.
    rejections_to_change_state: int = field(default=2, metadata=_rule(lo=1, hi=100))
    lost_stops_disk_backups: bool = True


@dataclass(frozen=True)
class JobsSettings:
    """``[jobs]``: concurrency and bookkeeping of jobs."""

    max_concurrent_backups: int = field(default=4, metadata=_rule(lo=1, hi=1024))
    agent_wait_seconds: int = field(default=3600, metadata=_rule(lo=0, hi=7 * 24 * 3600))
    job_history_days: int = field(default=30, metadata=_rule(lo=1, hi=3650))
    retry_attempts: int = field(default=3, metadata=_rule(lo=1, hi=20))
    retry_backoff_seconds: int = field(default=300, metadata=_rule(lo=1, hi=86400))


@dataclass(frozen=True)
class SchedulerSettings:
    """``[scheduler]``: protection-group schedules and maintenance (prune, gc)."""

    timezone: str = field(default="", metadata=_rule(check=_check_timezone))
    tick_seconds: int = field(default=20, metadata=_rule(lo=1, hi=3600))
    missed_grace_seconds: int = field(default=900, metadata=_rule(lo=0, hi=86400))
    maintenance_interval_minutes: int = field(default=60, metadata=_rule(lo=1, hi=10080))
    gc_interval_hours: int = field(default=24, metadata=_rule(lo=1, hi=8760))


@dataclass(frozen=True)
class AlertsSettings:
    """``[alerts]``: thresholds and the optional webhook."""

    webhook_url: str = field(default="", metadata=_rule(check=_check_webhook))
    rpo_grace_minutes: int = field(default=60, metadata=_rule(lo=0, hi=10080))
    agent_offline_minutes: int = field(default=60, metadata=_rule(lo=1, hi=10080))
    pool_warning_percent: int = field(default=80, metadata=_rule(lo=1, hi=100))
    pool_critical_percent: int = field(default=90, metadata=_rule(lo=1, hi=100))


@dataclass(frozen=True)
class AgentsSettings:
    """``[agents]``: registration tokens and liveness."""

    token_ttl_minutes: int = field(default=60, metadata=_rule(lo=1, hi=10080))
    heartbeat_seconds: int = field(default=30, metadata=_rule(lo=1, hi=3600))
    offline_after_seconds: int = field(default=90, metadata=_rule(lo=2, hi=86400))


@dataclass(frozen=True)
class ServerConfig:
    """The whole validated ``server.toml``. ``source`` (not compared) names where it came from."""

    server: ServerSettings = field(default_factory=ServerSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    pool: PoolSettings = field(default_factory=PoolSettings)
    scratch: ScratchSettings = field(default_factory=ScratchSettings)
    online: OnlineSettings = field(default_factory=OnlineSettings)
    cloud: CloudSettings = field(default_factory=CloudSettings)
    jobs: JobsSettings = field(default_factory=JobsSettings)
    agents: AgentsSettings = field(default_factory=AgentsSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    alerts: AlertsSettings = field(default_factory=AlertsSettings)
    source: str = field(default=DEFAULTS_SOURCE, compare=False)

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def pool_path(self) -> Path:
        return self.pool.path or self.data_dir / "pool"

    @property
    def catalog_path(self) -> Path:
        return self.data_dir / "catalog.sqlite"

    @property
    def scratch_path(self) -> Path:
        return self.scratch.path or self.data_dir / "scratch"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def tls_generated(self) -> bool:
        """True when the server makes its own CA and certificate under :attr:`tls_dir`."""
        return self.http.tls_cert is None

    @property
    def tls_cert_path(self) -> Path:
        return self.http.tls_cert or self.tls_dir / "server.crt"

    @property
    def tls_key_path(self) -> Path:
        return self.http.tls_key or self.tls_dir / "server.key"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def cli_config_path(self) -> Path:
        return self.data_dir / "cli.toml"

    @property
    def public_url(self) -> str:
        """What agents are told: ``http.public_url``, else ``https://<hostname>:<port>``."""
        if self.http.public_url:
            return self.http.public_url.rstrip("/")
        return f"https://{socket.gethostname()}:{self.http.port}"

    @property
    def agent_mqtt_url(self) -> str:
        """The broker URL agents are told: ``broker.url``, else the managed broker on the
        public URL's host."""
        if not self.broker.managed:
            return self.broker.url
        host = urlsplit(self.public_url).hostname or socket.gethostname()
        return f"mqtts://{_url_host(host)}:{self.broker.managed_port}"

    @property
    def server_mqtt_url(self) -> str:
        """The broker URL the server itself connects to (loopback for a wildcard managed host)."""
        if not self.broker.managed:
            return self.broker.url
        host = self.broker.managed_host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"mqtts://{_url_host(host)}:{self.broker.managed_port}"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


_SECTIONS: Final[dict[str, type[Any]]] = {
    "server": ServerSettings,
    "http": HttpSettings,
    "broker": BrokerSettings,
    "pool": PoolSettings,
    "scratch": ScratchSettings,
    "online": OnlineSettings,
    "cloud": CloudSettings,
    "jobs": JobsSettings,
    "agents": AgentsSettings,
    "scheduler": SchedulerSettings,
    "alerts": AlertsSettings,
}


# --------------------------------------------------------------------------- loading


def load_server_config(
    path: Path | None, *, overrides: Mapping[str, str] | None = None
) -> ServerConfig:
    """Read and validate ``path`` (``None``: embedded defaults), then apply ``overrides``.

    Raises :class:`ConfigError` for a missing or unreadable file, bad TOML, an unknown
    section or key, or a value of the wrong type or range.
    """
    source = DEFAULTS_SOURCE if path is None else str(path)
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(source, None, "no such file") from None
        except OSError as err:
            raise ConfigError(source, None, f"cannot read: {err.strerror or err}") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(source, None, f"not valid TOML: {err}") from err

    sections: dict[str, dict[str, tuple[str, object]]] = {name: {} for name in _SECTIONS}
    for name, table in raw.items():
        if name not in _SECTIONS:
            allowed = ", ".join(_SECTIONS)
            raise ConfigError(source, name, f"unknown section; allowed sections: {allowed}")
        if not isinstance(table, dict):
            raise ConfigError(source, name, f"must be a table ([{name}])")
        for key, value in table.items():
            sections[name][key] = (source, value)

    for dotted, text in (overrides or {}).items():
        name, _, key = dotted.partition(".")
        if name not in _SECTIONS or not key:
            allowed = ", ".join(f"{s}.KEY" for s in _SECTIONS)
            raise ConfigError(OVERRIDE_SOURCE, dotted, f"unknown key; allowed: {allowed}")
        sections[name][key] = (OVERRIDE_SOURCE, _from_text(_SECTIONS[name], key, text))

    built = {name: _build(cls, name, sections[name]) for name, cls in _SECTIONS.items()}
    config = ServerConfig(**built, source=source)
    _check_together(config, sections)
    return config


def _from_text(cls: type[Any], key: str, text: str) -> object:
    """Turn an override string into the TOML type the key expects (ints and bools differ)."""
    hints = get_type_hints(cls)
    if hints.get(key) is bool:
        return {"true": True, "false": False}.get(text, text)
    if hints.get(key) is int:
        try:
            return int(text, 10)
        except ValueError:
            return text  # _parse names the key and says an integer is expected
    return text


def _build(cls: type[Any], section: str, values: Mapping[str, tuple[str, object]]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = get_type_hints(cls)
    kwargs: dict[str, object] = {}
    for key, (source, value) in values.items():
        dotted = f"{section}.{key}"
        if key not in fields:
            allowed = ", ".join(fields)
            raise ConfigError(
                source, dotted, f"unknown key; allowed keys in [{section}]: {allowed}"
            )
        parsed = _parse(source, dotted, hints[key], fields[key].metadata, value)
        if parsed is not _DEFAULT:
            kwargs[key] = parsed
    return cls(**kwargs)


_DEFAULT: Final = object()  # "" for a required path: use the field's default


def _parse(source: str, key: str, hint: object, meta: Mapping[str, Any], value: object) -> object:
    def bad(allowed: str) -> ConfigError:
        return ConfigError(source, key, f"{value!r} is not allowed; expected {allowed}")

    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        lo, hi = meta["lo"], meta["hi"]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise bad(f"an integer from {lo} to {hi}")
        return value
    if not isinstance(value, str):
        raise bad("a string")
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        allowed = tuple(str(m.value) for m in hint)
        if value not in allowed:
            raise bad("one of " + ", ".join(allowed))
        return hint(value)
    if hint is Path or (isinstance(hint, UnionType) and Path in get_args(hint)):
        if value == "":
            return _DEFAULT if hint is Path else None
        if not Path(value).is_absolute():
            raise bad('an absolute path, or "" for the default')
        return Path(value)
    choices: tuple[str, ...] | None = meta.get("choices")
    if choices is not None and value not in choices:
        raise bad("one of " + ", ".join(choices))
    check: Check | None = meta.get("check")
    if check is not None and (problem := check(value)) is not None:
        raise bad(problem)
    return value


def _check_together(
    config: ServerConfig, given: Mapping[str, Mapping[str, tuple[str, object]]]
) -> None:
    """Rules that involve more than one key. The error names the first of ``keys`` that was
    set (an override before the file), so it points at the line to fix."""

    def fail(keys: tuple[str, ...], problem: str) -> ConfigError:
        setters = [
            (given[section][key][0], dotted)
            for dotted in keys
            for section, key in [dotted.split(".", 1)]
            if key in given[section]
        ]
        setters.sort(key=lambda item: item[0] != OVERRIDE_SOURCE)  # stable: keeps key order
        source, dotted = setters[0] if setters else (config.source, keys[0])
        return ConfigError(source, dotted, problem)

    http, broker, agents = config.http, config.broker, config.agents
    if (http.tls_cert is None) != (http.tls_key is None):
        raise fail(
            ("http.tls_cert", "http.tls_key"),
            'http.tls_cert and http.tls_key must both be set, or both be ""',
        )
    if broker.managed:
        for key in ("broker.password_file", "broker.ca_file"):
            if getattr(broker, key.split(".")[1]) is not None:
                raise fail(
                    (key,),
                    'only applies to an external broker (broker.url); leave it "" for the '
                    "managed Mosquitto",
                )
        if broker.managed_port == http.port:
            raise fail(
                ("broker.managed_port", "http.port"),
                f"broker.managed_port and http.port are both {http.port}; expected different ports",
            )
    elif broker.ca_file is not None and broker.url.startswith("mqtt://"):
        raise fail(("broker.ca_file", "broker.url"), "broker.ca_file needs an mqtts:// broker.url")
    if agents.offline_after_seconds <= agents.heartbeat_seconds:
        raise fail(
            ("agents.offline_after_seconds", "agents.heartbeat_seconds"),
            f"agents.offline_after_seconds ({agents.offline_after_seconds}) must be greater "
            f"than agents.heartbeat_seconds ({agents.heartbeat_seconds}); three heartbeats "
            "is usual",
        )


# --------------------------------------------------------------------------- reload


def _flat(config: ServerConfig) -> dict[str, object]:
    return {
        f"{name}.{f.name}": getattr(getattr(config, name), f.name)
        for name, cls in _SECTIONS.items()
        for f in dataclasses.fields(cls)
    }


def reload_diff(old: ServerConfig, new: ServerConfig) -> tuple[list[str], list[str]]:
    """Return ``(live, need_restart)``: the dotted keys that differ between ``old`` and
    ``new``, split by whether a SIGHUP may apply them (:data:`LIVE_KEYS`). Both sorted."""
    before, after = _flat(old), _flat(new)
    changed = sorted(key for key in before if before[key] != after[key])
    return [k for k in changed if k in LIVE_KEYS], [k for k in changed if k not in LIVE_KEYS]


def merge_live(old: ServerConfig, new: ServerConfig) -> ServerConfig:
    """``old`` with only the :data:`LIVE_KEYS` taken from ``new`` (what a SIGHUP applies)."""
    updates: dict[str, dict[str, object]] = {}
    for dotted in LIVE_KEYS:
        section, key = dotted.split(".", 1)
        updates.setdefault(section, {})[key] = getattr(getattr(new, section), key)
    sections = {
        name: dataclasses.replace(getattr(old, name), **values) for name, values in updates.items()
    }
    merged = dataclasses.replace(old, **sections, source=new.source)
    # Live keys can be inconsistent with each other only through agents.*, checked here.
    _check_together(merged, {name: {} for name in _SECTIONS})
    return merged
