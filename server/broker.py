"""The broker the server starts itself: a supervised Mosquitto child process.

:class:`ManagedBroker` writes, under the directory it is given (e.g. ``DATA/broker/``):

* ``mosquitto.conf``: one TLS listener, ``allow_anonymous false``, the password and ACL
  files below, persistence in ``persistence/``, ``log_dest stderr`` (each line becomes a
  ``broker_log`` structlog event), ``max_queued_messages 100000`` (Mosquitto's default of
  1000 silently drops QoS 1 messages to slow or offline subscribers), ``user root`` when
  running as root (otherwise Mosquitto drops to user ``mosquitto`` before reading the key,
  password and ACL files);
* ``passwd`` (0600): one ``user:$7$...`` line per identity, Mosquitto's own PBKDF2-SHA512
  format, hashed here (see :func:`hash_password`);
* ``acl``: static. ``pattern readwrite stockade/v1/agents/%u/#`` confines every user to its
  own subtree; ``stockade-server`` may also read and write ``stockade/v1/agents/#``.
  Nothing else (no ``$SYS``, no ``#``) is granted to anybody.

Identity and ACL safety:

* ``%u`` (username), never ``%c`` (client id): the client id is chosen freely by the client,
  the username is proven by the password. Usernames are restricted to
  ``[A-Za-z0-9_-]{1,64}`` (:data:`IDENTITY_RE`) before they reach the password file, so a
  substituted pattern can contain neither a wildcard nor an extra topic level (Mosquitto also
  refuses patterns for usernames holding ``+``/``#``, the CVE-2017-7650 fix).
* ``use_username_as_clientid true`` (default): the broker replaces the client id with the
  username, so one client cannot take over another's session (session takeover would hand
  it the victim's queued QoS 1 messages and disconnect the victim). Consequence: each
  identity has at most ONE live connection; a second connection as the same user
  disconnects the first. The server must use a single MQTT connection as
  ``stockade-server``.

Write ordering and reloads: identity changes rewrite ``passwd`` atomically (temp, fsync,
rename, directory fsync), then send SIGHUP. Mosquitto handles signals in its single-threaded
main loop and logs ``Reloading config.`` when it starts the reload; it accepts no connection
until the reload is done, so once that line is seen a removed identity is refused at its
next connect. On reload Mosquitto 2.0 also re-checks the credentials of connected clients
and disconnects those that no longer match (``mosquitto_security_apply``): a removed agent is
dropped right away. Its persistent session (subscriptions, queued messages) stays in the
broker's database until it expires; nobody else can resume it.

Persistence: ``persistence true`` with ``autosave_on_changes``: the in-memory database is
written after every ``autosave_changes`` changes (default 1: every stored message,
subscription or session change), so QoS 1 messages queued for offline agents survive a
SIGTERM restart and even a ``kill -9``. Mosquitto saves (temp file, fsync, rename) at the
end of the main loop pass that stored the message, just after it sent the PUBACK: a message
is on disk once the broker has answered any later packet from the publisher; a ``kill -9``
in the microseconds between PUBACK and save loses it. Mosquitto rewrites the whole database file
at each save (measured: ~850 QoS 1 messages/s with saving at every change against ~2500
without), cheap while queues are short, the control plane's normal state; raise
``autosave_changes`` if a broker with huge queues spends too long saving.

Supervision: :meth:`ManagedBroker.start` spawns ``mosquitto -c FILE`` (never ``-d``, so the
PID stays ours) and waits for its ``running`` log line. A supervisor task restarts it when
it dies (``broker_died``, then ``broker_restarted``), with a back-off from 0.5 s doubling to
30 s, reset once a broker instance stayed up for 60 s. :meth:`ManagedBroker.stop` sends
SIGTERM (Mosquitto saves its database and exits), then SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import structlog

from server.tls import TlsMaterial, write_file_atomic

__all__ = [
    "IDENTITY_RE",
    "SERVER_TOPIC_FILTER",
    "SERVER_USER",
    "TOPIC_ROOT",
    "BrokerError",
    "BrokerNotInstalledError",
    "BrokerPortInUseError",
    "BrokerStartError",
    "ManagedBroker",
    "hash_password",
    "validate_identity",
]

log = structlog.get_logger()

SERVER_USER: Final = "stockade-server"
TOPIC_ROOT: Final = "stockade/v1/agents"
SERVER_TOPIC_FILTER: Final = f"{TOPIC_ROOT}/#"
# Agent ids and the server user: no wildcard, no '/', no ':' (password file separator).
IDENTITY_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Mosquitto 2.0's `$7$` format: PBKDF2-HMAC-SHA512, 12-byte salt, 64-byte hash, base64.
_PBKDF2_SALT_BYTES: Final = 12
_PBKDF2_HASH_BYTES: Final = 64
# Passwords are random tokens minted by the server, so stretching buys little; Mosquitto
# pays this on every CONNECT. mosquitto_passwd's own default is 101.
DEFAULT_PBKDF2_ITERATIONS: Final = 1000

_MIN_BACKOFF: Final = 0.5
_MAX_BACKOFF: Final = 30.0
_STABLE_AFTER: Final = 60.0  # seconds up before the back-off starts again from the minimum
_STOP_GRACE: Final = 10.0
_TERM_REPEAT: Final = 0.2  # see _terminate
_RELOAD_TIMEOUT: Final = 10.0
_STDERR_TAIL: Final = 20  # lines kept to explain a failed start

_READY_RE: Final = re.compile(r"mosquitto version \S+ running")
_RELOAD_LINE: Final = "Reloading config."
_SAVE_PREFIX: Final = "Saving in-memory database"
_INSTALL_HINT: Final = "install it with `apt-get install mosquitto`"
# Debian puts mosquitto in /usr/sbin, which is not on a non-root user's PATH.
_FALLBACK_DIRS: Final = ("/usr/sbin", "/usr/local/sbin")


class BrokerError(Exception):
    """Root of the managed broker's errors."""


class BrokerNotInstalledError(BrokerError, FileNotFoundError):
    """The mosquitto binary is not installed (or not where we were told)."""


class BrokerPortInUseError(BrokerError):
    """Another process listens on the broker's host and port."""


class BrokerStartError(BrokerError):
    """Mosquitto exited or stayed silent while starting; the message holds its last lines."""


def validate_identity(user: str) -> str:
    """Return ``user`` if it is a valid broker identity, else raise ``ValueError``."""
    if not IDENTITY_RE.fullmatch(user):
        raise ValueError(
            f"invalid broker identity {user!r}: expected 1-64 characters of [A-Za-z0-9_-]"
        )
    return user


def hash_password(
    password: str, *, iterations: int = DEFAULT_PBKDF2_ITERATIONS, salt: bytes | None = None
) -> str:
    """Hash ``password`` into Mosquitto's ``$7$iterations$salt$hash`` password-file form.

    Blocking (PBKDF2): call through ``asyncio.to_thread`` from async code.
    """
    if not password:
        raise ValueError("broker password must not be empty")
    if salt is None:
        salt = secrets.token_bytes(_PBKDF2_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac(
        "sha512", password.encode("utf-8"), salt, iterations, _PBKDF2_HASH_BYTES
    )
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode('ascii')}${b64(digest).decode('ascii')}"


def _find_binary(name: str) -> str:
    found = shutil.which(name)
    if found is None and os.sep not in name:
        for directory in _FALLBACK_DIRS:
            found = shutil.which(name, path=directory)
            if found is not None:
                break
    if found is None:
        raise BrokerNotInstalledError(
            f"mosquitto binary {name!r} not found on PATH or in {', '.join(_FALLBACK_DIRS)}; "
            f"{_INSTALL_HINT}"
        )
    return found


ORPHAN_PID_NAME = "mosquitto.pid"


def _stop_orphan(pid_file: Path, config_path: Path) -> None:
    """Stop a mosquitto left running by a server that was killed (SIGKILL skips our stop).

    Only a process whose command line names this broker's own config file is touched, so a
    recycled pid or someone else's mosquitto is never signalled."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if (
        not cmdline
        or not cmdline[0].endswith(b"mosquitto")
        or (os.fsencode(config_path) not in cmdline)
    ):
        return
    log.warning("broker_orphan_stopped", pid=pid, config=str(config_path))
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.05)


def _check_port_free(host: str, port: int) -> None:
    """Raise :class:`BrokerPortInUseError` when something already listens on host:port.

    Binds the way Mosquitto does (SO_REUSEADDR), so TIME_WAIT leftovers of our own previous
    broker do not count as "in use".
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise BrokerStartError(f"cannot resolve broker listen host {host!r}: {err}") from err
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise BrokerPortInUseError(
                        f"broker port {port} on {host} is already in use by another process; "
                        "choose another port or stop that process"
                    ) from err
                raise BrokerStartError(f"cannot bind broker listener {host}:{port}: {err}") from err


def _conf_path(path: Path) -> str:
    text = str(path)
    if "\n" in text or "\r" in text:
        raise BrokerError(f"path {text!r} cannot appear in mosquitto.conf (line break)")
    return text


class _Instance:
    """One running mosquitto process and the task turning its stderr into log events."""

    def __init__(self, process: asyncio.subprocess.Process, generation: int) -> None:
        self.process = process
        self.generation = generation
        self.ready = asyncio.Event()
        self.reloaded = asyncio.Event()
        self.tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL)
        self.reader: asyncio.Task[None] = asyncio.create_task(
            self._read_stderr(), name=f"broker-stderr-{process.pid}"
        )

    async def _read_stderr(self) -> None:
        stream = self.process.stderr
        assert stream is not None  # spawned with stderr=PIPE
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the stream limit: drop it, keep reading
                continue
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            self.tail.append(line)
            if line.startswith("Error"):
                log.error("broker_log", pid=self.process.pid, line=line)
            elif line.startswith(_SAVE_PREFIX):
                # One per stored message with autosave_on_changes: not worth an info line.
                log.debug("broker_log", pid=self.process.pid, line=line)
            elif line.startswith(("Warning", "OpenSSL Error")):
                log.warning("broker_log", pid=self.process.pid, line=line)
            else:
                log.info("broker_log", pid=self.process.pid, line=line)
            if _READY_RE.search(line):
                self.ready.set()
            elif line == _RELOAD_LINE:
                self.reloaded.set()

    def alive(self) -> bool:
        return self.process.returncode is None

    def failure(self) -> str:
        tail = " | ".join(self.tail) or "(no output)"
        return f"exit code {self.process.returncode}; last output: {tail}"


class ManagedBroker:
    """A Mosquitto broker started, reloaded, restarted and stopped by the server.

    ``directory`` holds the generated config, password and ACL files and the persistence
    database; ``tls`` gives the listener's certificate and key. Identities (``user ->
    password``) are set with :meth:`set_identities`, :meth:`add_identity` and
    :meth:`remove_identity`, before or after :meth:`start`.
    """

    def __init__(
        self,
        directory: Path,
        tls: TlsMaterial,
        host: str,
        port: int,
        *,
        mosquitto: str = "mosquitto",
        autosave_changes: int = 1,
        username_as_client_id: bool = True,
        pbkdf2_iterations: int = DEFAULT_PBKDF2_ITERATIONS,
        start_timeout: float = 10.0,
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"invalid broker port {port}")
        if autosave_changes < 1:
            raise ValueError(f"autosave_changes must be >= 1, got {autosave_changes}")
        self.directory = directory
        self.tls = tls
        self.host = host
        self.port = port
        self._mosquitto = mosquitto
        self._autosave_changes = autosave_changes
        self._username_as_client_id = username_as_client_id
        self._iterations = pbkdf2_iterations
        self._start_timeout = start_timeout
        # user -> (password, password-file line); the password is kept only to skip
        # re-hashing unchanged identities.
        self._identities: dict[str, tuple[str, str]] = {}
        self._lock = asyncio.Lock()
        self._instance: _Instance | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._any_ready = asyncio.Event()
        self._password_version = 0  # bumped at each password file write
        self._generation = 0  # bumped at each mosquitto process spawned

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtts://{host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def password_path(self) -> Path:
        return self.directory / "passwd"

    @property
    def acl_path(self) -> Path:
        return self.directory / "acl"

    @property
    def persistence_dir(self) -> Path:
        return self.directory / "persistence"

    @property
    def pid(self) -> int | None:
        """PID of the running mosquitto process, None when there is none."""
        instance = self._instance
        if instance is None or not instance.alive():
            return None
        return instance.process.pid

    @property
    def generation(self) -> int:
        """How many mosquitto processes were spawned (1 after start, +1 per restart)."""
        return self._generation

    @property
    def identities(self) -> frozenset[str]:
        return frozenset(self._identities)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Write the files, start mosquitto, wait until it listens, start the supervisor.

        Raises :class:`BrokerNotInstalledError`, :class:`BrokerPortInUseError` or
        :class:`BrokerStartError`.
        """
        if self._supervisor is not None:
            raise BrokerError(f"broker {self.url} already started")
        binary = _find_binary(self._mosquitto)
        await asyncio.to_thread(_stop_orphan, self.directory / ORPHAN_PID_NAME, self.config_path)
        await asyncio.to_thread(_check_port_free, self.host, self.port)
        async with self._lock:
            await asyncio.to_thread(self._write_static_files, binary)
            await self._write_password_file()
        self._stopping = False
        await self._spawn(binary)
        log.info("broker_started", url=self.url, pid=self.pid, directory=str(self.directory))
        self._supervisor = asyncio.create_task(self._supervise(binary), name="broker-supervisor")

    async def wait_ready(self, *, after_generation: int = 0) -> None:
        """Wait until a broker instance accepts connections.

        ``after_generation``: wait for an instance spawned after that :attr:`generation`
        (e.g. the restart following a crash). Waits forever if the broker never comes
        back: wrap it in ``asyncio.timeout``.
        """
        while True:
            instance = self._instance
            if (
                instance is not None
                and instance.generation > after_generation
                and instance.alive()
                and instance.ready.is_set()
            ):
                return
            self._any_ready.clear()
            await self._any_ready.wait()

    async def stop(self) -> None:
        """Stop supervising, SIGTERM the broker (it saves its database), SIGKILL if stuck."""
        self._stopping = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            # asyncio.wait, not `await supervisor`: our own cancellation must still propagate.
            await asyncio.wait({supervisor})
            if not supervisor.cancelled():
                supervisor.exception()  # already logged as broker_supervisor_crashed
        instance, self._instance = self._instance, None
        if instance is None:
            return
        await _terminate(instance)
        log.info("broker_stopped", url=self.url, returncode=instance.process.returncode)

    async def __aenter__(self) -> ManagedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ identities

    async def set_identities(self, identities: Mapping[str, str]) -> None:
        """Replace all identities with ``identities`` (user -> password) and reload."""
        for user in identities:
            validate_identity(user)
        async with self._lock:
            old = self._identities
            new: dict[str, tuple[str, str]] = {}
            for user, password in identities.items():
                known = old.get(user)
                if known is not None and known[0] == password:
                    new[user] = known
                else:
                    line = await asyncio.to_thread(
                        hash_password, password, iterations=self._iterations
                    )
                    new[user] = (password, line)
            self._identities = new
            await self._apply()

    async def add_identity(self, user: str, password: str) -> None:
        """Add or replace one identity and reload."""
        validate_identity(user)
        line = await asyncio.to_thread(hash_password, password, iterations=self._iterations)
        async with self._lock:
            self._identities = {**self._identities, user: (password, line)}
            await self._apply()

    async def remove_identity(self, user: str) -> None:
        """Remove one identity (absent is fine) and reload: its next connect is refused
        and, if connected, Mosquitto drops it during the reload."""
        async with self._lock:
            if user not in self._identities:
                return
            self._identities = {u: v for u, v in self._identities.items() if u != user}
            await self._apply()

    async def _apply(self) -> None:
        """Write the password file and make the running broker load it. Caller holds the lock."""
        if not self.directory.exists():
            return  # not started yet: start() writes everything
        await self._write_password_file()
        instance = self._instance
        if instance is None or not instance.alive():
            return  # a (re)started broker reads the new file at start
        if not instance.ready.is_set():
            # Too early for SIGHUP (the handler may not be installed yet: SIGHUP would kill
            # it); _spawn sends one once it is ready.
            return
        await self._reload(instance)

    async def _reload(self, instance: _Instance) -> None:
        instance.reloaded.clear()
        with contextlib.suppress(ProcessLookupError):
            instance.process.send_signal(signal.SIGHUP)
        try:
            async with asyncio.timeout(_RELOAD_TIMEOUT):
                await instance.reloaded.wait()
        except TimeoutError:
            log.warning("broker_reload_unconfirmed", url=self.url, pid=instance.process.pid)
            return
        log.info("broker_reloaded", url=self.url, identities=len(self._identities))

    async def _write_password_file(self) -> None:
        lines = [f"{user}:{line}\n" for user, (_, line) in sorted(self._identities.items())]
        data = "".join(lines).encode("ascii")
        await asyncio.to_thread(write_file_atomic, self.password_path, data, mode=0o600)
        self._password_version += 1

    def _write_static_files(self, binary: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.persistence_dir.mkdir(exist_ok=True)
        acl = (
            "# Generated by stockade (server/broker.py); rewritten at every start.\n"
            "# Every user: its own subtree only (%u = authenticated username).\n"
            f"pattern readwrite {TOPIC_ROOT}/%u/#\n"
            "\n"
            f"user {SERVER_USER}\n"
            f"topic readwrite {SERVER_TOPIC_FILTER}\n"
        )
        write_file_atomic(self.acl_path, acl.encode("ascii"), mode=0o600)
        write_file_atomic(self.config_path, self._config_text().encode("utf-8"), mode=0o600)
        log.debug("broker_config_written", path=str(self.config_path), binary=binary)

    def _config_text(self) -> str:
        lines = [
            "# Generated by stockade (server/broker.py); rewritten at every start.",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {_conf_path(self.password_path)}",
            f"acl_file {_conf_path(self.acl_path)}",
            "max_queued_messages 100000",
            "persistence true",
            f"persistence_location {_conf_path(self.persistence_dir)}",
            "autosave_on_changes true",
            f"autosave_interval {self._autosave_changes}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp false",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            # As root Mosquitto switches to user "mosquitto" before reading the key,
            # password and ACL files, which are ours and 0600.
            lines.append("user root")
        lines += [
            "",
            f"listener {self.port} {self.host}",
            f"certfile {_conf_path(self.tls.server_cert)}",
            f"keyfile {_conf_path(self.tls.server_key)}",
            f"cafile {_conf_path(self.tls.ca_cert)}",
            "tls_version tlsv1.2",
            # A listener option: written before any `listener` line it would create
            # Mosquitto's default listener on port 1883.
            f"use_username_as_clientid {str(self._username_as_client_id).lower()}",
            "",
        ]
        return "\n".join(lines)

    # ------------------------------------------------------------------ processes

    async def _spawn(self, binary: str) -> None:
        """Start one mosquitto and wait for its "running" line; raise BrokerError if not."""
        loaded_version = self._password_version
        try:
            process = await asyncio.create_subprocess_exec(
                binary,
                "-c",
                str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                # Its own session: a terminal's Ctrl-C reaches us, and we stop it in order.
                start_new_session=True,
            )
        except FileNotFoundError as err:
            raise BrokerNotInstalledError(
                f"mosquitto binary {binary!r} vanished; {_INSTALL_HINT}"
            ) from err
        except OSError as err:
            raise BrokerStartError(f"cannot run mosquitto binary {binary!r}: {err}") from err
        self._generation += 1
        instance = _Instance(process, self._generation)
        # Recorded so the next start can stop it should this server die by SIGKILL.
        await asyncio.to_thread(
            write_file_atomic,
            self.directory / ORPHAN_PID_NAME,
            f"{process.pid}\n".encode(),
            mode=0o600,
        )
        self._instance = instance
        exited = asyncio.create_task(process.wait(), name=f"broker-wait-{process.pid}")
        ready = asyncio.create_task(instance.ready.wait(), name=f"broker-ready-{process.pid}")
        try:
            done, _ = await asyncio.wait(
                {exited, ready},
                timeout=self._start_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            ready.cancel()
            exited.cancel()
        if ready not in done or not instance.alive():
            if instance.alive():
                await _terminate(instance)
            else:
                await instance.reader
            failure = instance.failure()
            if "Address already in use" in failure:
                raise BrokerPortInUseError(
                    f"broker port {self.port} on {self.host} is already in use: {failure}"
                )
            raise BrokerStartError(
                f"mosquitto {binary} -c {self.config_path} did not start: {failure}"
            )
        self._any_ready.set()
        async with self._lock:
            # The identities may have changed between exec and "ready", when a SIGHUP
            # could not be sent yet (see _apply): reload once to be sure.
            if self._password_version != loaded_version:
                await self._reload(instance)

    async def _supervise(self, binary: str) -> None:
        try:
            await self._supervise_forever(binary)
        except Exception:
            # Task boundary: without this the broker would silently stay down.
            log.exception("broker_supervisor_crashed", url=self.url)
            raise

    async def _supervise_forever(self, binary: str) -> None:
        backoff = _MIN_BACKOFF
        loop = asyncio.get_running_loop()
        while not self._stopping:
            instance = self._instance
            assert instance is not None
            started = loop.time()
            returncode = await instance.process.wait()
            await instance.reader
            if self._stopping:
                return
            if loop.time() - started >= _STABLE_AFTER:
                backoff = _MIN_BACKOFF
            log.error(
                "broker_died",
                url=self.url,
                pid=instance.process.pid,
                returncode=returncode,
                last_output=list(instance.tail)[-5:],
                restart_in=backoff,
            )
            while not self._stopping:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                try:
                    await self._spawn(binary)
                except BrokerError as err:
                    log.error("broker_restart_failed", url=self.url, error=str(err))
                    continue
                log.info("broker_restarted", url=self.url, pid=self.pid)
                break


async def _terminate(instance: _Instance) -> None:
    """SIGTERM until it exits, SIGKILL after the grace period; then drain its stderr.

    SIGTERM is repeated because Mosquitto 2.0 sets its ``run`` flag to 1 *after* logging
    "running" and installing its handlers: a SIGTERM landing in between is forgotten
    (seen here as an occasional 10 s stop right after a start).
    """
    process = instance.process
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _STOP_GRACE
    while process.returncode is None and loop.time() < deadline:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_TERM_REPEAT):
                await process.wait()
    if process.returncode is None:
        log.warning("broker_kill", pid=process.pid, after_seconds=_STOP_GRACE)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
    await instance.reader
