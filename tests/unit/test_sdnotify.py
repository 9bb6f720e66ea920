"""agent.sdnotify: datagrams to a real AF_UNIX socket named by NOTIFY_SOCKET."""

import ast
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sdnotify import Notifier

ROOT = Path(__file__).resolve().parents[2]
ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd's notify socket, and its path."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        yield sock, str(path)


def receive(sock: socket.socket) -> list[str]:
    return sock.recv(65536).decode("utf-8").split("\n")


def test_messages_reach_the_socket(
    clean_env: pytest.MonkeyPatch, listener: tuple[socket.socket, str]
) -> None:
    sock, path = listener
    clean_env.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier.from_env()
    assert notifier.enabled

    assert notifier.ready()
    assert receive(sock) == ["READY=1"]
    assert notifier.status("pool open\nbroker up")
    assert receive(sock) == ["STATUS=pool open broker up"]  # one line: no injected keys
    assert notifier.watchdog()
    assert receive(sock) == ["WATCHDOG=1"]
    assert notifier.stopping("jobs draining")
    assert receive(sock) == ["STOPPING=1", "STATUS=jobs draining"]
    assert notifier.extend_timeout(90)
    assert receive(sock) == ["EXTEND_TIMEOUT_USEC=90000000"]

    assert notifier.reloading()
    reloading, monotonic = receive(sock)
    assert reloading == "RELOADING=1"
    assert monotonic.startswith("MONOTONIC_USEC=")
    assert int(monotonic.removeprefix("MONOTONIC_USEC=")) > 0


def test_abstract_socket(clean_env: pytest.MonkeyPatch) -> None:
    name = f"stockade-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        clean_env.setenv("NOTIFY_SOCKET", "@" + name)
        assert Notifier.from_env().ready("serving")
        assert receive(sock) == ["READY=1", "STATUS=serving"]


def test_without_notify_socket_everything_is_a_no_op(clean_env: pytest.MonkeyPatch) -> None:
    notifier = Notifier.from_env()
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    sent = [
        notifier.ready(),
        notifier.status("x"),
        notifier.watchdog(),
        notifier.stopping(),
        notifier.reloading(),
        notifier.extend_timeout(1),
    ]
    assert sent == [False] * len(sent)


def test_unusable_address_disables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    notifier = Notifier.from_env()
    assert (notifier.enabled, notifier.ready()) == (False, False)


def test_send_to_a_vanished_socket_returns_false(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    notifier = Notifier.from_env()
    assert notifier.enabled
    assert notifier.ready() is False  # no exception: the daemon keeps running


def test_from_env_unsets_the_variables(clean_env: pytest.MonkeyPatch) -> None:
    """Children (the managed Mosquitto speaks sd_notify) must not inherit our socket."""
    clean_env.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    clean_env.setenv("WATCHDOG_USEC", "60000000")
    Notifier.from_env()
    assert not any(key in os.environ for key in ENV_KEYS)


def test_from_env_can_keep_the_variables(clean_env: pytest.MonkeyPatch) -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "60000000"}
    assert Notifier.from_env(env, unset_environment=False).enabled
    assert env == {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "60000000"}


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("60000000", None, 30.0),
        ("60000000", "self", 30.0),
        ("60000000", "other", None),
        ("0", None, None),
        ("junk", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(usec: str | None, pid: str | None, expected: float | None) -> None:
    env: dict[str, str] = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    if usec is not None:
        env["WATCHDOG_USEC"] = usec
    if pid == "self":
        env["WATCHDOG_PID"] = str(os.getpid())
    elif pid == "other":
        env["WATCHDOG_PID"] = str(os.getpid() + 1)
    assert Notifier.from_env(env).watchdog_interval() == expected


def test_fresh_process_notifies_like_a_daemon(listener: tuple[socket.socket, str]) -> None:
    """A daemon reads the variables from its real environment, as systemd sets them."""
    sock, path = listener
    code = (
        "from agent.sdnotify import Notifier\n"
        "import os\n"
        "n = Notifier.from_env()\n"
        "assert 'NOTIFY_SOCKET' not in os.environ\n"
        "n.status(f'interval={n.watchdog_interval()}')\n"
        "n.ready()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env |= {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000"}
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert receive(sock) == ["STATUS=interval=10.0"]
    assert receive(sock) == ["READY=1"]


def test_sdnotify_is_a_stdlib_leaf() -> None:
    """The server imports agent.sdnotify, so it must pull in nothing else of ours."""
    tree = ast.parse((ROOT / "agent" / "sdnotify.py").read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {
        "." * node.level + (node.module or "")
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    outside = {name for name in imported if name.split(".")[0] not in sys.stdlib_module_names}
    assert not outside, f"agent/sdnotify.py imports outside the standard library: {outside}"
