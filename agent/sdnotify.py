"""sd_notify(3) for the daemons: readiness, status, watchdog, stop and reload to systemd.

A leaf like :mod:`agent.protocol`: standard library only, nothing of Stockade, so the server
imports it too. The protocol is one ``AF_UNIX`` datagram of ``KEY=VALUE`` lines sent to
``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket).

Contract:

* Without ``$NOTIFY_SOCKET`` (not started by systemd, or ``Type=`` is not ``notify``) every
  method does nothing and returns ``False``.
* A send never raises: it returns ``True`` when the datagram went out, ``False`` otherwise.
  The daemon keeps running when systemd cannot be told; it may log the ``False``.
* A send blocks for at most :data:`SEND_TIMEOUT` seconds (systemd reads its socket at
  once; this only bounds a stuck manager). Call it from the event loop freely.
* :meth:`Notifier.from_env` removes ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
  ``WATCHDOG_PID`` from ``os.environ`` by default (sd_notify's ``unset_environment``), so
  children such as the managed Mosquitto, which speaks sd_notify itself, do not talk to
  systemd in our name. Call it once, early in the entry point.

Order the daemon follows: :meth:`~Notifier.ready` once it serves (after the pool, catalog,
broker and listeners are up); :meth:`~Notifier.watchdog` every
:meth:`~Notifier.watchdog_interval` seconds from the event loop, so a stuck loop misses it
and systemd restarts the service; :meth:`~Notifier.reloading` on SIGHUP then
:meth:`~Notifier.ready` when the new settings apply; :meth:`~Notifier.stopping` on SIGTERM.
"""

import os
import socket
import time
from collections.abc import Mapping, MutableMapping
from typing import Final

__all__ = ["SEND_TIMEOUT", "Notifier"]

SEND_TIMEOUT: Final = 1.0
_ENV_KEYS: Final = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sends sd_notify messages to one socket address (``None``: disabled)."""

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
    ) -> None:
        """``address`` is ``$NOTIFY_SOCKET`` as systemd sets it: an absolute path or
        ``@name`` (abstract). Anything else (e.g. ``vsock:``) disables the notifier."""
        self._address: str | None = None
        if address and address.startswith("/"):
            self._address = address
        elif address and address.startswith("@") and len(address) > 1:
            self._address = "\0" + address[1:]  # Linux abstract namespace
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._watchdog_pid = watchdog_pid

    @classmethod
    def from_env(
        cls,
        environ: MutableMapping[str, str] | None = None,
        *,
        unset_environment: bool = True,
    ) -> "Notifier":
        """Build from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` in
        ``environ`` (default ``os.environ``), removing them when ``unset_environment``."""
        env = os.environ if environ is None else environ
        values: Mapping[str, str] = {key: env.get(key, "") for key in _ENV_KEYS}
        if unset_environment:
            for key in _ENV_KEYS:
                env.pop(key, None)
        return cls(
            values["NOTIFY_SOCKET"] or None,
            watchdog_usec=_positive_int(values["WATCHDOG_USEC"]),
            watchdog_pid=_positive_int(values["WATCHDOG_PID"]),
        )

    @property
    def enabled(self) -> bool:
        """True when messages go somewhere (``$NOTIFY_SOCKET`` was usable)."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between :meth:`watchdog` pings: half of ``WATCHDOG_USEC`` (as
        sd_watchdog_enabled(3) advises), or ``None`` when no watchdog is asked of this
        process (unset, or ``WATCHDOG_PID`` names another process)."""
        if self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def ready(self, status: str | None = None) -> bool:
        """Startup finished (or a reload did); ``status`` optionally sets STATUS= too."""
        return self.notify("READY=1", *self._status(status))

    def status(self, text: str) -> bool:
        """One line shown by ``systemctl status``."""
        return self.notify(*self._status(text))

    def watchdog(self) -> bool:
        """Watchdog keep-alive."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown began."""
        return self.notify("STOPPING=1", *self._status(status))

    def reloading(self, status: str | None = None) -> bool:
        """A reload began; send :meth:`ready` when it is done. MONOTONIC_USEC lets
        ``Type=notify-reload`` (systemd 253+) match it to the reload request."""
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", *self._status(status))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start-up (or shutdown) time, e.g. while an unclean pool is checked."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(1, int(seconds * 1_000_000))}")

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; ``False`` when disabled or it failed."""
        if self._address is None or not assignments:
            return False
        message = "\n".join(assignments).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT)
                sock.sendto(message, self._address)
        except OSError:
            return False
        return True

    @staticmethod
    def _status(text: str | None) -> tuple[str, ...]:
        if text is None:
            return ()
        # A newline would start a new assignment: keep STATUS to one line.
        return ("STATUS=" + " ".join(text.splitlines()),)

    def __repr__(self) -> str:
        where = "disabled" if self._address is None else repr(self._address.replace("\0", "@"))
        return f"Notifier({where}, watchdog_interval={self.watchdog_interval()})"


def _positive_int(text: str) -> int | None:
    try:
        value = int(text, 10)
    except ValueError:
        return None
    return value if value > 0 else None
