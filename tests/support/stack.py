"""A whole Stockade installation for end-to-end tests: the real server (with its own
managed Mosquitto), real agents and the real CLI, each a subprocess on loopback ports.

Each test gets its own data directory, ports and agent state directories. Processes are
killed at teardown whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tests.support.mqtt import free_port, require_binary

BIN = Path(sys.executable).parent
READY_TIMEOUT = 60.0


def _bin(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `make setup` (pip install -e .)")
    return str(path)


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> int | None:
    """Signal `proc` and wait for it (SIGKILL after `timeout`); its exit code."""
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc else None
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def kill_managed_broker(data_dir: Path) -> None:
    """SIGKILL the Mosquitto a server on `data_dir` started, if it is still running."""
    conf = str(data_dir / "broker")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"mosquitto") and any(conf.encode() in c for c in cmd):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


class ServerAddress(Protocol):
    """Where agents find a server: a subprocess (ServerProc) or an in-process one (sim)."""

    @property
    def url(self) -> str: ...

    @property
    def ca_file(self) -> Path: ...


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class ServerProc:
    base: Path
    http_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.base / "server-data"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.base / "server.log"

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    def command(self) -> list[str]:
        return [
            _bin("stockade-server"),
            "--data-dir",
            str(self.data_dir),
            "--set",
            "http.listen_host=127.0.0.1",
            "--set",
            f"http.port={self.http_port}",
            "--set",
            f"http.public_url={self.url}",
            "--set",
            "broker.managed_host=127.0.0.1",
            "--set",
            f"broker.managed_port={self.mqtt_port}",
            "--log-level",
            "info",
            *self.extra,
        ]

    def start(self) -> None:
        require_binary("mosquitto")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
        )
        log.close()
        self.wait_ready()

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"stockade-server exited with {self.proc.returncode}:\n{self.tail()}"
                )
            if self.ca_file.exists():
                try:
                    with urllib.request.urlopen(
                        f"{self.url}/api/v1/health", context=self.ssl_context(), timeout=2
                    ) as resp:
                        if resp.status == 200 and b"server_ready" in self.log_path.read_bytes():
                            return
                except (urllib.error.URLError, ConnectionError, ssl.SSLError, TimeoutError):
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"stockade-server not ready in {READY_TIMEOUT} s:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        lines = [ln for ln in lines if "aiohttp.access" not in ln]
        return "\n".join(lines[-n:])

    def log_events(self) -> Iterator[dict[str, Any]]:
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                yield doc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90.0) -> int | None:
        return stop_process(self.proc, sig, timeout)

    def kill9(self) -> None:
        """SIGKILL the server alone. Its managed broker outlives it (as it would outside
        systemd's cgroup); the next start must find and stop that orphan itself."""
        self.stop(signal.SIGKILL)

    def _kill_managed_broker(self) -> None:
        kill_managed_broker(self.data_dir)

    def operator_token(self) -> str:
        return (self.data_dir / "operator.token").read_text().strip()

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        """One HTTP call; returns (status, decoded JSON or bytes)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.operator_token()}")
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=30) as resp:
                payload = resp.read()
                status = resp.status
                ctype = resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            payload = err.read()
            status = err.code
            ctype = err.headers.get("Content-Type", "")
        if "json" in ctype:
            return status, json.loads(payload)
        return status, payload


@dataclass
class AgentProc:
    server: ServerAddress
    state_dir: Path
    name: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.state_dir.parent / f"agent-{self.name}.log"

    def register(self, token: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                _bin("stockade-agent"),
                "register",
                "--server",
                self.server.url,
                f"--token={token}",
                "--name",
                self.name,
                "--ca-file",
                str(self.server.ca_file),
                "--state-dir",
                str(self.state_dir),
            ],
            capture_output=True,
            check=False,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    def identity(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.state_dir / "identity.json").read_text())
        return doc

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                _bin("stockade-agent"),
                "--log-level",
                "debug",
                "run",
                "--state-dir",
                str(self.state_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90.0) -> int | None:
        return stop_process(self.proc, sig, timeout)

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"


def run_cli(cli_config: Path, args: Sequence[str], timeout: float = 300.0) -> CliResult:
    """The real `stockade` CLI with the server-written config (no STOCKADE_* overrides)."""
    env = dict(os.environ)
    env["STOCKADE_CLI_CONFIG"] = str(cli_config)
    for key in ("STOCKADE_SERVER", "STOCKADE_TOKEN", "STOCKADE_CA_FILE"):
        env.pop(key, None)
    proc = subprocess.run(
        [_bin("stockade"), *args],
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class Stack:
    base: Path
    server: ServerProc
    agents: dict[str, AgentProc] = field(default_factory=dict)

    @classmethod
    def start(cls, base: Path) -> Stack:
        stack = cls(base, ServerProc(base))
        stack.server.start()
        return stack

    def cli(self, *args: str, timeout: float = 300.0, check: bool = False) -> CliResult:
        result = run_cli(self.server.data_dir / "cli.toml", args, timeout)
        if check and result.code != 0:
            raise AssertionError(
                f"stockade {' '.join(args)} exited {result.code}:\n{result.out}\n{result.err}\n"
                f"--- server log ---\n{self.server.tail()}\n"
                + "\n".join(f"--- agent {a.name} ---\n{a.tail()}" for a in self.agents.values())
            )
        return result

    def add_agent(self, name: str, *, start: bool = True) -> AgentProc:
        token = self.cli("New-AgentToken", "-Json", check=True).json()["token"]
        agent = AgentProc(self.server, self.base / f"agent-{name}", name)
        reg = agent.register(token)
        if reg.returncode != 0:
            raise AssertionError(f"register failed: {reg.stdout}\n{reg.stderr}")
        self.agents[name] = agent
        if start:
            agent.start()
            self.wait_agent_online(name)
        return agent

    def wait_agent_online(self, name: str, online: bool = True, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            agents = self.cli("Get-Agent", "-Json", check=True).json()
            if any(a["name"] == name and a["online"] is online for a in agents):
                return
            time.sleep(0.3)
        raise AssertionError(
            f"agent {name} not online={online} after {timeout} s\n"
            f"{self.agents[name].tail() if name in self.agents else ''}\n{self.server.tail()}"
        )

    def add_files_source(
        self, agent: str, paths: Sequence[Path | str], excludes: Sequence[str] = ()
    ) -> dict[str, Any]:
        args = ["New-DataSource", "-Agent", agent, "-Path", ",".join(str(p) for p in paths)]
        if excludes:
            args += ["-Exclude", ",".join(excludes)]
        doc: dict[str, Any] = self.cli(*args, "-Json", check=True).json()
        return doc[0] if isinstance(doc, list) else doc

    def backup(self, ds_id: str, *, wait: bool = True) -> dict[str, Any]:
        args = ["Start-Backup", "-DataSource", ds_id, "-Json"]
        if wait:
            args.append("-Wait")
        res = self.cli(*args)
        if res.code not in (0, 1):
            raise AssertionError(f"Start-Backup: {res.code} {res.out} {res.err}")
        doc: dict[str, Any] = res.json()
        return doc[0] if isinstance(doc, list) else doc

    def job(self, job_id: str) -> dict[str, Any]:
        doc = self.cli("Get-Job", "-Id", job_id, "-Json", check=True).json()
        job: dict[str, Any] = doc[0] if isinstance(doc, list) else doc
        return job

    def wait_job(self, job_id: str, timeout: float = 300.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["state"] in ("succeeded", "succeeded_with_warnings", "failed", "cancelled"):
                return job
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} not finished after {timeout} s")

    def recovery_points(self, ds_id: str) -> list[dict[str, Any]]:
        doc: list[dict[str, Any]] = self.cli(
            "Get-RecoveryPoint", "-DataSource", ds_id, "-Json", check=True
        ).json()
        return doc

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop(signal.SIGKILL)
        self.server.stop()
        self.server._kill_managed_broker()
