"""The vault connection monitor: probes, observes real traffic, and says `CloudStatus`.

Two sources feed one `HealthRecord` (server/cloud_contact.py, which holds the rules):

- **the probe**, every ``cloud.probe_interval_minutes`` on the server's clock (checked
  every ``scheduler.tick_seconds`` of real time, like maintenance, so a test moving a fake
  clock gets probes at simulated times), or at once on `probe` (Get-CloudConnection
  -Probe) and after a registration: read and check the header, write and delete a small
  object (server/cloud_probe.py), one attempt, at most `PROBE_TIMEOUT_SECONDS`;
- **every vault operation** of online backup, restore, verify, GC and sync, through
  `storage_pool.vault.observed.Observed` (`observe`, `opener`): a success proves contact,
  a failure is recorded with its reason, a rejection counts towards a state change and
  asks for a probe at once (at most one every `REQUESTED_PROBE_GAP_SECONDS`).

`status` is computed from memory (cheap, sync): ``not_registered`` without a registration;
else ``lost`` when the last success is older than ``cloud.lost_after_days``, else
``connected`` or ``disconnected`` by the last attempt. A fresh registration counts as a
success at its time (it reached the vault).

Every change of (connectivity, vault state) is saved first, then logged
(``cloud_status_changed``), then, entering ``deprovisioned``, every online RP in the
catalog is marked deleted, then the `CLOUD_CONNECTION` alert is opened or resolved
(server/cloud_alert.py), then the subscribers run (`subscribe`).

Persisted in the catalog's ``server_state`` under ``cloud_health``: the record's JSON
(`HealthRecord.to_json`), saved on each probe and each change, so last contact, state and
rejection count survive a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog

from server.alerts import AlertCenter
from server.catalog import Catalog
from server.cloud_alert import alarm, log_fields, sync_alert
from server.cloud_contact import (
    HealthRecord,
    Source,
    classify,
    connectivity_of,
    rejection_of,
)
from server.cloud_probe import HeaderMissing, probe_vault
from server.cloud_status import CloudStatus, Connectivity
from server.config import ServerConfig
from server.loops import repeat
from server.vault_backends import REGISTRATION_RETRY, describe, open_backend
from server.vault_registry import BackendOpener, NotRegisteredError, VaultRegistry
from server.vault_state import Registration, RegistrationFileError
from storage_pool.vault.backend import VaultBackend, VaultBackendError
from storage_pool.vault.header import VaultState
from storage_pool.vault.observed import Observed
from storage_pool.vault.retry import RetryPolicy

__all__ = ["STATE_KEY", "CloudHealth", "StatusCallback"]

log = structlog.get_logger()

STATE_KEY: Final = "cloud_health"
PROBE_TIMEOUT_SECONDS: Final = 60.0
# Real time between probes asked for by failing operations (a job failing in a loop).
REQUESTED_PROBE_GAP_SECONDS: Final = 10.0

StatusCallback = Callable[[CloudStatus, CloudStatus], Awaitable[None]]
_Key = tuple[Connectivity, VaultState | None, bool]


@dataclass(frozen=True, slots=True)
class _Vault:
    vault_id: str
    description: str
    registered_at: float


class _Scoped:
    """Reports to the monitor only while `location` is the registered vault's, so a
    New-Vault against another place cannot move the registered vault's state."""

    __slots__ = ("_health", "_location")

    def __init__(self, health: CloudHealth, location: str) -> None:
        self._health = health
        self._location = location

    def on_contact(self) -> None:
        if self._health.watches(self._location):
            self._health.on_contact()

    def on_failure(self, exc: VaultBackendError) -> None:
        if self._health.watches(self._location):
            self._health.on_failure(exc)


class CloudHealth:
    def __init__(
        self,
        catalog: Catalog,
        registry: VaultRegistry,
        config_provider: Callable[[], ServerConfig],
        clock: Callable[[], float],
        alerts: AlertCenter | None = None,
        *,
        probe_opener: BackendOpener | None = None,
    ) -> None:
        self._catalog = catalog
        self._registry = registry
        self._config = config_provider
        self._clock = clock
        self._alerts = alerts
        # The probe's own backend: unobserved (it records its outcome itself), no retries.
        self._probe_opener = probe_opener or (lambda spec: open_backend(spec, retry=None))
        self._record = HealthRecord()
        self._vault: _Vault | None = None
        self._loaded = False
        self._announced: CloudStatus | None = None
        self._announced_key: _Key | None = None
        self._load_lock = asyncio.Lock()
        self._probe_lock = asyncio.Lock()
        self._publish_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subscribers: list[StatusCallback] = []
        self._wake = asyncio.Event()
        self._probe_requested = False
        self._probed_at: float | None = None  # the clock at this process's last probe
        self._probed_mono = -math.inf
        registry.add_listener(self._on_registration)

    # -- reading -------------------------------------------------------------------

    def status(self) -> CloudStatus:
        """The status now, from memory (call `load` once first; the daemon does)."""
        cloud = self._config().cloud
        now = self._clock()
        lost_after = cloud.lost_after_days * 86400.0
        vault = self._vault
        if vault is None:
            return CloudStatus.unregistered(
                now, lost_after, lost_stops_disk_backups=cloud.lost_stops_disk_backups
            )
        r = self._record
        return CloudStatus(
            connectivity=connectivity_of(r, now, lost_after),
            vault_state=r.vault_state,
            vault=vault.description,
            last_success=r.last_success,
            last_failure=r.last_failure,
            last_error=r.last_error,
            last_reason=r.last_reason,
            last_probe=r.last_probe,
            checked_at=now,
            lost_after_seconds=lost_after,
            lost_stops_disk_backups=cloud.lost_stops_disk_backups,
        )

    def watches(self, location: str) -> bool:
        """Whether `location` (`describe` of a spec) is the registered vault's."""
        return self._vault is not None and self._vault.description == location

    def subscribe(self, callback: StatusCallback) -> Callable[[], None]:
        """Await `callback(old, new)` after each change of (connectivity, vault state),
        once it is saved; its exceptions are logged. Returns the unsubscribe function."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    # -- observing operations ------------------------------------------------------

    def observe(self, backend: VaultBackend, *, location: str | None = None) -> VaultBackend:
        """`backend` reporting to this monitor (only while `location`, when given, is the
        registered vault's)."""
        return Observed(backend, self if location is None else _Scoped(self, location))

    def opener(self, retry: RetryPolicy | None = REGISTRATION_RETRY) -> BackendOpener:
        """`open_backend` with every backend observed. The registry keeps the default short
        retry budget (the outcome of each retried call is reported); the online runner
        passes ``retry=None`` and wraps its own `Retrying` (each attempt is reported)."""

        def open_observed(spec: Mapping[str, Any]) -> VaultBackend:
            return self.observe(open_backend(spec, retry=retry), location=describe(spec))

        return open_observed

    def on_contact(self) -> None:
        if self._vault is None:
            return
        self._record.contact(self._clock(), Source.OPERATION)
        self._changed()

    def on_failure(self, exc: VaultBackendError) -> None:
        if self._vault is None:
            return
        rejection = rejection_of(exc)
        self._record.failure(
            self._clock(),
            classify(exc),
            str(exc),
            Source.OPERATION,
            rejection=rejection,
            limit=self._config().cloud.rejections_to_change_state,
        )
        if rejection is not None:
            self._probe_requested = True
            self._wake.set()
        self._changed()

    def _on_registration(self, registration: Registration | None) -> None:
        """A registration written, or removed (None: Unregister-Vault). The status follows
        at once; the record stays, so re-registering the same vault continues it."""
        if not self._loaded:
            return  # `load` reads the registration itself
        self._adopt(registration)
        if registration is not None:
            self._probe_requested = True
            self._wake.set()
        self._changed()

    # -- life cycle ----------------------------------------------------------------

    async def load(self) -> None:
        """Read the saved record and the registration; reconcile the alert. Idempotent."""
        async with self._load_lock:
            if self._loaded:
                return
            raw = await self._catalog.get_server_state(STATE_KEY)
            record = HealthRecord()
            if raw is not None:
                try:
                    record = HealthRecord.from_json(json.loads(raw))
                except ValueError as err:  # a damaged record: start over, say so
                    log.warning("cloud_health_record_unreadable", error=str(err))
            self._record = record
            readable, registration = await self._read_registration()
            self._adopt(registration if readable else None)
            self._loaded = True
            status = self.status()
            self._announced, self._announced_key = status, self._key(status)
            await self._save()
            if status.vault_state is VaultState.DEPROVISIONED:
                # A crash may have come between saving the state and marking the RPs.
                await self._catalog.mark_all_online_rps_deleted()
            await self._sync_alert(status)
            log.info("cloud_health_loaded", **log_fields(status, self._record))

    async def run(self) -> None:
        """Probe on schedule forever (see the module docstring); survives any error."""
        await repeat(
            self._tick,
            failed_event="cloud_probe_round_failed",
            interval=self._tick_seconds,
            wake=self._wake,
        )

    async def settle(self) -> None:
        """Wait until every change already seen is saved, alerted and announced."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        self._registry.remove_listener(self._on_registration)
        await self.settle()

    def _tick_seconds(self) -> float:
        config = self._config()
        return float(min(config.scheduler.tick_seconds, config.cloud.probe_interval_minutes * 60))

    async def _tick(self) -> None:
        await self.load()
        interval = self._config().cloud.probe_interval_minutes * 60.0
        due = self._probed_at is None or self._clock() - self._probed_at >= interval
        if self._probe_requested:
            due = due or time.monotonic() - self._probed_mono >= REQUESTED_PROBE_GAP_SECONDS
        if due:
            await self.probe()
        elif self._key(self.status()) != self._announced_key:
            await self._publish()  # lost by the clock alone, between probes

    # -- the probe -----------------------------------------------------------------

    async def probe(self) -> CloudStatus:
        """Probe the registered vault now; the status after it (never raises for the
        vault's sake: every failure is recorded with its reason)."""
        await self.load()
        async with self._probe_lock:
            self._probe_requested = False
            self._probed_mono = time.monotonic()
            self._probed_at = self._clock()
            readable, registration = await self._read_registration()
            if not readable:
                return self.status()  # a local problem, logged; the cloud was not asked
            self._adopt(registration)
            if registration is None:
                return await self._publish(force_alert=True)
            limit = self._config().cloud.rejections_to_change_state
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                    state = await self._probe_vault(registration)
            except NotRegisteredError:  # unregistered while probing
                self._adopt(None)
            except Exception as err:  # every failure is a finding, never a crash
                cause: BaseException = err.err if isinstance(err, HeaderMissing) else err
                reason = classify(cause)
                self._record.failure(
                    self._clock(),
                    reason,
                    str(err) or type(err).__name__,
                    Source.PROBE,
                    rejection=rejection_of(cause, header_read=isinstance(err, HeaderMissing)),
                    limit=limit,
                )
                log.warning(
                    "cloud_probe_failed",
                    vault_id=registration.vault_id,
                    reason=reason.value,
                    error=self._record.last_error,
                    rejections=self._record.rejections,
                )
            else:
                self._record.contact(self._clock(), Source.PROBE)
                self._record.header_says(state)
                log.debug("cloud_probe_ok", vault_id=registration.vault_id, state=state.value)
            return await self._publish(force_alert=True)

    async def _read_registration(self) -> tuple[bool, Registration | None]:
        """(readable, registration): a damaged registration file must not stop the server
        or the monitor; Get-Vault and Register-Vault report it."""
        try:
            return True, await self._registry.registration()
        except RegistrationFileError as err:
            log.error("cloud_probe_registration_unreadable", error=str(err))
            return False, None

    async def _probe_vault(self, registration: Registration) -> VaultState:
        backend = self._probe_opener(registration.backend)
        try:
            return await probe_vault(backend, self._registry)
        finally:
            await backend.close()

    # -- changes -------------------------------------------------------------------

    def _adopt(self, registration: Registration | None) -> None:
        """Follow the registration: a new vault starts a fresh record, a newer
        registration of the same vault counts as a contact at its time."""
        if registration is None:
            self._vault = None
            return
        self._vault = _Vault(
            registration.vault_id, describe(registration.backend), registration.registered_at
        )
        r = self._record
        if r.vault_id != registration.vault_id:
            self._record = HealthRecord.for_registration(
                registration.vault_id, registration.registered_at
            )
        elif r.registered_at is None or registration.registered_at > r.registered_at:
            r.registered_at = registration.registered_at
            r.contact(registration.registered_at, Source.REGISTRATION)

    def _key(self, status: CloudStatus) -> _Key:
        return (status.connectivity, status.vault_state, alarm(status, self._record))

    def _changed(self) -> None:
        """After an observed operation: publish if the status moved."""
        if not self._loaded or self._key(self.status()) == self._announced_key:
            return
        task = asyncio.get_running_loop().create_task(self._publish(), name="cloud-status")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cloud_status_publish_failed", error=repr(task.exception()))

    async def _publish(self, *, force_alert: bool = False) -> CloudStatus:
        """Save, then (on a change) log, mark RPs of a deprovisioned vault deleted,
        alert and tell the subscribers, in that order."""
        async with self._publish_lock:
            new = self.status()
            key = self._key(new)
            await self._save()
            old, old_key = self._announced, self._announced_key
            if key == old_key:
                if force_alert:
                    await self._sync_alert(new)
                return new
            self._announced, self._announced_key = new, key
            fields = log_fields(new, self._record)
            if old is not None:
                fields.update(
                    previous_connectivity=old.connectivity.value,
                    previous_vault_state=None if old.vault_state is None else old.vault_state.value,
                )
            if new.connected or not new.registered:
                log.info("cloud_status_changed", **fields)
            else:
                log.warning("cloud_status_changed", **fields)
            entering_deprovisioned = new.vault_state is VaultState.DEPROVISIONED and (
                old is None or old.vault_state is not VaultState.DEPROVISIONED
            )
            if entering_deprovisioned:
                count = await self._catalog.mark_all_online_rps_deleted()
                log.warning("vault_deprovisioned_rps_deleted", count=count, vault=new.vault)
            await self._sync_alert(new)
            if old is not None and (old.connectivity, old.vault_state) != (
                new.connectivity,
                new.vault_state,
            ):
                for callback in list(self._subscribers):
                    try:
                        await callback(old, new)
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # a subscriber's bug must not stop the monitor
                        log.exception("cloud_status_subscriber_failed")
            return new

    async def _save(self) -> None:
        doc = self._record.to_json()
        await self._catalog.set_server_state(STATE_KEY, json.dumps(doc, sort_keys=True))

    async def _sync_alert(self, status: CloudStatus) -> None:
        if self._alerts is not None:
            vault_id = self._vault.vault_id if self._vault is not None else None
            await sync_alert(self._alerts, self._catalog, status, self._record, vault_id)
