"""server.config and agent.config: TOML settings, validation messages, reload, agent identity."""

import dataclasses
import json
import os
import stat
import tomllib
from pathlib import Path

import pytest

from agent.config import (
    AgentConfig,
    AgentIdentity,
    IdentityError,
    NotRegisteredError,
    default_state_dir,
    load_agent_config,
    load_identity,
    save_identity,
)
from agent.config import ConfigError as AgentConfigError
from server.config import (
    LIVE_KEYS,
    ConfigError,
    ServerConfig,
    default_data_dir,
    load_server_config,
    merge_live,
    reload_diff,
)
from storage_pool.pool import Durability

ROOT = Path(__file__).resolve().parents[2]
SERVER_EXAMPLE = ROOT / "config" / "server.example.toml"
AGENT_EXAMPLE = ROOT / "config" / "agent.example.toml"


def write(tmp_path: Path, text: str, name: str = "server.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- server


def test_server_example_loads_and_equals_the_defaults() -> None:
    example = load_server_config(SERVER_EXAMPLE)
    assert example == load_server_config(None) == ServerConfig()
    assert example.source == str(SERVER_EXAMPLE)


def test_server_example_sets_every_key() -> None:
    """Every key is documented in the example with a value (not only in a comment)."""
    raw = tomllib.loads(SERVER_EXAMPLE.read_text(encoding="utf-8"))
    config = ServerConfig()
    expected = {
        section.name: {f.name for f in dataclasses.fields(getattr(config, section.name))}
        for section in dataclasses.fields(config)
        if section.name != "source"
    }
    assert {name: set(table) for name, table in raw.items()} == expected


def test_server_defaults() -> None:
    config = load_server_config(None)
    assert config.server.log_level == "info"
    assert config.server.shutdown_grace_seconds == 30
    assert (config.http.listen_host, config.http.port) == ("0.0.0.0", 8443)
    assert config.broker.managed
    assert (config.broker.managed_port, config.broker.mosquitto) == (8883, "mosquitto")
    assert config.broker.username == "stockade-server"
    assert config.pool.durability is Durability.FILESYSTEM
    assert config.pool.io_workers == 4
    assert config.jobs.max_concurrent_backups == 4
    assert config.jobs.agent_wait_seconds == 3600
    assert config.jobs.job_history_days == 30
    assert config.agents.token_ttl_minutes == 60
    assert (config.agents.heartbeat_seconds, config.agents.offline_after_seconds) == (30, 90)
    assert config.tls_generated


def test_default_data_dir() -> None:
    assert default_data_dir(euid=0, environ={}) == Path("/var/lib/stockade")
    assert default_data_dir(euid=1000, environ={"HOME": "/home/u"}) == Path(
        "/home/u/.local/share/stockade"
    )
    xdg = {"HOME": "/home/u", "XDG_DATA_HOME": "/data"}
    assert default_data_dir(euid=1000, environ=xdg) == Path("/data/stockade")
    relative = {"HOME": "/home/u", "XDG_DATA_HOME": "rel"}  # ignored, as the XDG spec says
    assert default_data_dir(euid=1000, environ=relative) == Path("/home/u/.local/share/stockade")


def test_derived_paths(tmp_path: Path) -> None:
    config = load_server_config(None, overrides={"server.data_dir": str(tmp_path)})
    assert config.data_dir == tmp_path
    assert config.pool_path == tmp_path / "pool"
    assert config.catalog_path == tmp_path / "catalog.sqlite"
    assert config.scratch_path == tmp_path / "scratch"
    assert config.tls_dir == tmp_path / "tls"
    assert config.tls_cert_path.parent == config.tls_key_path.parent == tmp_path / "tls"
    assert config.broker_dir == tmp_path / "broker"
    assert config.cli_config_path == tmp_path / "cli.toml"

    moved = load_server_config(
        write(
            tmp_path,
            '[pool]\npath = "/srv/pool"\n[scratch]\npath = "/srv/scratch"\n'
            '[http]\ntls_cert = "/etc/ssl/s.pem"\ntls_key = "/etc/ssl/s.key"\n',
        )
    )
    assert (moved.pool_path, moved.scratch_path) == (Path("/srv/pool"), Path("/srv/scratch"))
    assert (moved.tls_cert_path, moved.tls_key_path) == (
        Path("/etc/ssl/s.pem"),
        Path("/etc/ssl/s.key"),
    )
    assert not moved.tls_generated


def test_urls() -> None:
    config = load_server_config(
        None, overrides={"http.public_url": "https://backup.example.org:9443/"}
    )
    assert config.public_url == "https://backup.example.org:9443"
    assert config.agent_mqtt_url == "mqtts://backup.example.org:8883"
    assert config.server_mqtt_url == "mqtts://127.0.0.1:8883"
    assert load_server_config(None).public_url.endswith(":8443")

    v6 = load_server_config(None, overrides={"broker.managed_host": "::"})
    assert v6.server_mqtt_url == "mqtts://[::1]:8883"

    external = load_server_config(None, overrides={"broker.url": "mqtts://mq.example.org:8884"})
    assert not external.broker.managed
    assert external.agent_mqtt_url == external.server_mqtt_url == "mqtts://mq.example.org:8884"


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[http]\nport = 9000\n[server]\nlog_level = "debug"\n')
    config = load_server_config(path, overrides={"http.port": "9001"})
    assert (config.http.port, config.server.log_level) == (9001, "debug")


@pytest.mark.parametrize(
    ("text", "key", "allowed"),
    [
        ("[http]\nprot = 1\n", "http.prot", "allowed keys in [http]: listen_host, port,"),
        ("[htp]\nport = 1\n", "htp", "allowed sections: server, http, broker"),
        ("http = 1\n", "http", "must be a table"),
        ("[http]\nport = 70000\n", "http.port", "an integer from 1 to 65535"),
        ('[http]\nport = "8443"\n', "http.port", "an integer from 1 to 65535"),
        ("[http]\nport = true\n", "http.port", "an integer from 1 to 65535"),
        ('[http]\nlisten_host = "a b"\n', "http.listen_host", "an IP address or a host name"),
        ('[http]\npublic_url = "http://x:1"\n', "http.public_url", "https://host:port"),
        ('[server]\nlog_level = "loud"\n', "server.log_level", "debug, info, warning, error"),
        ('[server]\ndata_dir = "var/lib"\n', "server.data_dir", "an absolute path"),
        ("[server]\nshutdown_grace_seconds = -1\n", "server.shutdown_grace_seconds", "0 to"),
        ('[broker]\nurl = "mqtts://mq"\n', "broker.url", "(with a port)"),
        ('[broker]\nurl = "tcp://mq:1883"\n', "broker.url", "mqtts://host:port"),
        ('[broker]\nusername = "a/#"\n', "broker.username", "without / + #"),
        ('[broker]\nmosquitto = "bin/mosq"\n', "broker.mosquitto", "an absolute path"),
        ('[pool]\ndurability = "none"\n', "pool.durability", "one of file, filesystem"),
        ("[pool]\nio_workers = 0\n", "pool.io_workers", "an integer from 1 to 64"),
        ("[jobs]\nmax_concurrent_backups = 0\n", "jobs.max_concurrent_backups", "from 1 to"),
        ("[agents]\ntoken_ttl_minutes = 10081\n", "agents.token_ttl_minutes", "1 to 10080"),
        (
            "[agents]\nheartbeat_seconds = 90\n",
            "agents.heartbeat_seconds",
            "must be greater than agents.heartbeat_seconds (90)",
        ),
        ('[http]\ntls_cert = "/c.pem"\n', "http.tls_cert", "must both be set"),
        ('[broker]\npassword_file = "/p"\n', "broker.password_file", "external broker"),
        ("[broker]\nmanaged_port = 8443\n", "broker.managed_port", "different ports"),
        (
            '[broker]\nurl = "mqtt://mq:1883"\nca_file = "/ca.pem"\n',
            "broker.ca_file",
            "needs an mqtts://",
        ),
    ],
)
def test_bad_server_config_names_file_key_and_allowed(
    tmp_path: Path, text: str, key: str, allowed: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_server_config(path)
    err = caught.value
    assert isinstance(err, ValueError)
    assert (err.source, err.key) == (str(path), key)
    message = str(err)
    assert message.startswith(f"{path}: {key}: ")
    assert allowed in message


def test_bad_override_names_the_override() -> None:
    with pytest.raises(ConfigError, match=r"^override: http\.port: 'x' is not allowed"):
        load_server_config(None, overrides={"http.port": "x"})
    with pytest.raises(ConfigError, match=r"^override: nope: unknown key"):
        load_server_config(None, overrides={"nope": "1"})


def test_unreadable_server_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=f"^{missing}: no such file$"):
        load_server_config(missing)
    broken = write(tmp_path, "[http\n")
    with pytest.raises(ConfigError, match=f"^{broken}: not valid TOML"):
        load_server_config(broken)


def test_config_is_frozen() -> None:
    config = load_server_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.http.port = 1  # type: ignore[misc]


def test_reload_diff_splits_live_and_restart(tmp_path: Path) -> None:
    old = load_server_config(None)
    new = load_server_config(
        write(
            tmp_path,
            '[server]\nlog_level = "debug"\n[jobs]\nmax_concurrent_backups = 8\n'
            "[agents]\nheartbeat_seconds = 20\noffline_after_seconds = 60\n"
            "[http]\nport = 9443\n[pool]\nio_workers = 2\n",
        )
    )
    live, restart = reload_diff(old, new)
    assert live == [
        "agents.heartbeat_seconds",
        "agents.offline_after_seconds",
        "jobs.max_concurrent_backups",
        "server.log_level",
    ]
    assert restart == ["http.port", "pool.io_workers"]
    assert reload_diff(old, load_server_config(SERVER_EXAMPLE)) == ([], [])

    merged = merge_live(old, new)
    assert merged.server.log_level == "debug"
    assert merged.jobs.max_concurrent_backups == 8
    assert merged.agents.heartbeat_seconds == 20
    assert (merged.http.port, merged.pool.io_workers) == (8443, 4)  # wait for a restart
    assert reload_diff(merged, new) == ([], ["http.port", "pool.io_workers"])


def test_live_keys_exist() -> None:
    live, restart = reload_diff(ServerConfig(), ServerConfig())
    assert (live, restart) == ([], [])
    config = ServerConfig()
    for dotted in LIVE_KEYS:
        section, key = dotted.split(".")
        assert hasattr(getattr(config, section), key), dotted


# --------------------------------------------------------------------------- agent settings


def test_agent_example_loads_and_equals_the_defaults() -> None:
    example = load_agent_config(AGENT_EXAMPLE)
    assert example == load_agent_config(None) == AgentConfig()
    assert example.upload_parallelism == 4
    assert example.chunk_batch_bytes == 16 * 1024 * 1024
    assert example.log_level == "info"
    assert example.identity_path == example.state_dir / "identity.json"


def test_agent_example_sets_every_key() -> None:
    raw = tomllib.loads(AGENT_EXAMPLE.read_text(encoding="utf-8"))
    keys = {f.name for f in dataclasses.fields(AgentConfig)} - {"source"}
    assert {name: set(table) for name, table in raw.items()} == {"agent": keys}


def test_agent_default_state_dir() -> None:
    assert default_state_dir(euid=0) == Path("/var/lib/stockade-agent")
    assert default_state_dir(euid=1000, environ={"HOME": "/home/u"}) == Path(
        "/home/u/.local/share/stockade-agent"
    )


def test_agent_settings_and_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'[agent]\nstate_dir = "{tmp_path}"\nupload_parallelism = 8\n'
        f'identity_file = "{tmp_path}/id/identity.json"\n',
        "agent.toml",
    )
    config = load_agent_config(path, overrides={"agent.log_level": "debug"})
    assert (config.state_dir, config.upload_parallelism, config.log_level) == (
        tmp_path,
        8,
        "debug",
    )
    assert config.identity_path == tmp_path / "id" / "identity.json"


@pytest.mark.parametrize(
    ("text", "key", "allowed"),
    [
        ("[agent]\nbogus = 1\n", "agent.bogus", "allowed keys in [agent]: state_dir,"),
        ("[server]\nport = 1\n", "server", "the only section is [agent]"),
        ("[agent]\nupload_parallelism = 0\n", "agent.upload_parallelism", "from 1 to 64"),
        ("[agent]\nchunk_batch_bytes = 1\n", "agent.chunk_batch_bytes", "from 1048576 to"),
        ('[agent]\nlog_level = "trace"\n', "agent.log_level", "debug, info, warning, error"),
        ('[agent]\nstate_dir = "relative"\n', "agent.state_dir", "an absolute path"),
    ],
)
def test_bad_agent_config(tmp_path: Path, text: str, key: str, allowed: str) -> None:
    path = write(tmp_path, text, "agent.toml")
    with pytest.raises(AgentConfigError) as caught:
        load_agent_config(path)
    assert (caught.value.source, caught.value.key) == (str(path), key)
    assert str(caught.value).startswith(f"{path}: {key}: ")
    assert allowed in str(caught.value)


# --------------------------------------------------------------------------- agent identity

IDENTITY = AgentIdentity(
    agent_id="web01-3f2a",
    credential="s3cret-credential",
    server_url="https://backup.example.org:8443",
    mqtt_url="mqtts://backup.example.org:8883",
    ca_pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    command_key="ab" * 32,
)


def test_identity_round_trip_with_tight_modes(tmp_path: Path) -> None:
    path = tmp_path / "state" / "identity.json"
    save_identity(path, IDENTITY)
    assert load_identity(path) == IDENTITY
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.stat().st_uid == os.geteuid()
    assert sorted(p.name for p in path.parent.iterdir()) == ["identity.json"]  # no temp left
    assert IDENTITY.command_key_bytes == bytes.fromhex("ab" * 32)


def test_identity_save_replaces_and_tightens_the_directory(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    path = directory / "identity.json"
    save_identity(path, IDENTITY)
    renewed = dataclasses.replace(IDENTITY, credential="rotated")
    save_identity(path, renewed)
    assert load_identity(path) == renewed
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_identity_repr_hides_secrets() -> None:
    text = repr(IDENTITY)
    assert "web01-3f2a" in text
    for secret in (IDENTITY.credential, IDENTITY.command_key, "BEGIN CERTIFICATE"):
        assert secret not in text


def test_missing_identity_says_how_to_register(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    with pytest.raises(NotRegisteredError) as caught:
        load_identity(path)
    assert str(caught.value) == (
        f"{path}: not registered: run stockade-agent register --server URL --token T"
    )
    assert isinstance(caught.value, AgentConfigError)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_identity_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "state" / "identity.json"
    save_identity(path, IDENTITY)
    path.chmod(mode)
    with pytest.raises(
        IdentityError, match=rf"mode 0{mode:o} lets group or others read.*chmod 600"
    ):
        load_identity(path)


def test_identity_in_a_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "identity.json"
    save_identity(path, IDENTITY)
    path.parent.chmod(0o777)
    with pytest.raises(IdentityError, match="writable by group or others"):
        load_identity(path)


def test_identity_invalid_content(tmp_path: Path) -> None:
    path = tmp_path / "state" / "identity.json"
    save_identity(path, IDENTITY)
    document = json.loads(path.read_text(encoding="utf-8"))
    document["command_key"] = "zz"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(IdentityError, match=r"command_key: invalid value; expected .*hex"):
        load_identity(path)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(IdentityError, match="not valid JSON"):
        load_identity(path)


def test_save_refuses_an_invalid_identity(tmp_path: Path) -> None:
    path = tmp_path / "state" / "identity.json"
    bad = dataclasses.replace(IDENTITY, agent_id="web/#")
    with pytest.raises(IdentityError, match="agent_id: invalid value"):
        save_identity(path, bad)
    assert not path.exists()
