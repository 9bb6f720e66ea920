"""The vault connection monitor (server/cloud_health.py) on a real folder vault and a real
catalog: probes, classification, vault-state transitions from what the vault says,
observed operations, alerts, persistence. Failures the folder cannot produce (a rejected
credential, a dead network) are injected by wrapping the real backend (`Faulty`)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
from pathlib import Path

import pytest
import structlog

from server.catalog_rows import AlertSeverity
from server.cloud_contact import (
    HealthRecord,
    Rejection,
    Source,
    classify,
    redact,
    rejection_of,
)
from server.cloud_health import STATE_KEY, CloudHealth
from server.cloud_probe import PROBE_PREFIX
from server.cloud_status import CloudStatus, Connectivity, ContactFailure
from server.config import load_server_config
from server.vault_registry import VaultMismatchError
from server.vault_sync import sync_registered
from storage_pool.vault.backend import (
    AuthError,
    ContainerGone,
    IntegrityError,
    NotFound,
    Throttled,
    TransientError,
    VaultBackendError,
)
from storage_pool.vault.folder import FolderBackend
from storage_pool.vault.format import HEADER_NAME
from storage_pool.vault.format_errors import HeaderTamperedError
from storage_pool.vault.header import VaultHeader, VaultState, with_state
from storage_pool.vault.observed import Observed
from tests.unit.server.catalog_fixture import FakeClock
from tests.unit.server.health_fixture import Monitored, faulty_opener, health_config, monitored
from tests.unit.server.vault_fixture import PASSPHRASE, folder_spec

DAY = 86400.0


async def registered(m: Monitored, root: Path) -> None:
    creds = await m.registry.new_vault(folder_spec(root))
    await m.registry.register(creds.to_doc(), PASSPHRASE)
    await m.health.settle()


def transient(kind: str = "connect") -> TransientError:
    return TransientError("folder vault x", None, "connection refused", kind=kind)  # type: ignore[arg-type]


def key(s: CloudStatus) -> tuple[Connectivity, VaultState | None]:
    return s.connectivity, s.vault_state


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (TransientError("b", None, "x", kind="dns"), ContactFailure.DNS),
        (TransientError("b", None, "x", kind="connect"), ContactFailure.TCP),
        (TransientError("b", None, "x", kind="reset"), ContactFailure.TCP),
        (TransientError("b", None, "x", kind="tls"), ContactFailure.TLS),
        (TransientError("b", None, "x", kind="timeout"), ContactFailure.TIMEOUT),
        (TransientError("b", None, "x", kind="server_error"), ContactFailure.SERVER_ERROR),
        (TransientError("b", None, "x", kind="other"), ContactFailure.OTHER),
        (Throttled("b", None, "slow down", retry_after=1.0), ContactFailure.THROTTLED),
        (AuthError("b", "n", "403"), ContactFailure.AUTHENTICATION),
        (ContainerGone("b", None, "gone"), ContactFailure.NOT_FOUND),
        (NotFound("b", "n", "no such object"), ContactFailure.NOT_FOUND),
        (IntegrityError("b", "n", "md5"), ContactFailure.INTEGRITY),
        (HeaderTamperedError("mac"), ContactFailure.INTEGRITY),
        (VaultMismatchError("a" * 32, "b" * 32), ContactFailure.INTEGRITY),
        (TimeoutError(), ContactFailure.TIMEOUT),
        (VaultBackendError("b", None, "teapot", status=418), ContactFailure.OTHER),
    ],
)
def test_classify(error: BaseException, reason: ContactFailure) -> None:
    assert classify(error) is reason


def test_rejections_and_redaction() -> None:
    assert rejection_of(AuthError("b", None, "x")) == "authentication"
    assert rejection_of(ContainerGone("b", None, "x")) == "gone"
    assert rejection_of(NotFound("b", HEADER_NAME, "x")) is None
    assert rejection_of(NotFound("b", HEADER_NAME, "x"), header_read=True) == "gone"
    assert rejection_of(Throttled("b", None, "x")) is None
    text = redact("GET https://a/c?sv=2024&sig=abc%2Fdef&se=1 failed; AccountKey=Zm9v==;")
    assert "abc" not in text and "Zm9v" not in text and "sig=<hidden>" in text


def test_record_round_trips_and_refuses_garbage() -> None:
    r = HealthRecord.for_registration("ab" * 16, 100.0)
    r.failure(
        200.0,
        ContactFailure.AUTHENTICATION,
        "403",
        Source.PROBE,
        rejection=Rejection.AUTHENTICATION,
        limit=1,
    )
    again = HealthRecord.from_json(json.loads(json.dumps(r.to_json())))
    assert again == r and again.vault_state is VaultState.EXPIRED
    for bad in ({}, {"format_version": 99}, {**r.to_json(), "rejections": -1}):
        with pytest.raises(ValueError):
            HealthRecord.from_json(bad)


# --------------------------------------------------------------------------- probes


async def test_not_registered_then_registration_counts_as_contact(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with monitored(tmp_path, clock) as m:
        assert m.health.status().connectivity is Connectivity.NOT_REGISTERED
        assert (await m.health.probe()).connectivity is Connectivity.NOT_REGISTERED
        assert m.faults.calls == 0
        await registered(m, tmp_path / "vault")
        status = m.health.status()
        assert key(status) == (Connectivity.CONNECTED, VaultState.ACTIVE)
        assert status.last_success == clock.now and status.connected
        assert status.vault == f"folder {tmp_path / 'vault'}"
        assert [(key(a), key(b)) for a, b in m.changes] == [
            ((Connectivity.NOT_REGISTERED, None), (Connectivity.CONNECTED, VaultState.ACTIVE))
        ]
        clock.now += 600
        probed = await m.health.probe()
        assert probed.connected and probed.last_probe == clock.now == probed.last_success
        # The probe object went away again, and the vault's own namespace is untouched.
        names = [i.name async for i in FolderBackend(tmp_path / "vault").list()]
        assert not [n for n in names if n.startswith(PROBE_PREFIX)]
        assert await m.open_alert() is None


async def test_transient_failures_disconnect_then_lose_after_15_days(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with monitored(tmp_path, clock) as m:
        await registered(m, tmp_path / "vault")
        m.faults.error = transient("connect")
        for _ in range(5):  # a transient error never changes the vault state
            clock.now += 300
            status = await m.health.probe()
            assert key(status) == (Connectivity.DISCONNECTED, VaultState.ACTIVE)
        assert status.last_reason is ContactFailure.TCP and not status.connected
        alert = await m.open_alert()
        assert alert is not None and alert.severity is AlertSeverity.ERROR
        assert "tcp" in alert.message
        clock.now += 15 * DAY  # > 15 days since the last success
        assert m.health.status().connectivity is Connectivity.LOST
        status = await m.health.probe()
        assert key(status) == (Connectivity.LOST, VaultState.ACTIVE)
        alert = await m.open_alert()
        assert alert is not None and alert.severity is AlertSeverity.CRITICAL
        m.faults.error = None
        assert (await m.health.probe()).connected
        assert await m.open_alert() is None
        assert [key(b) for _, b in m.changes][-3:] == [
            (Connectivity.DISCONNECTED, VaultState.ACTIVE),
            (Connectivity.LOST, VaultState.ACTIVE),
            (Connectivity.CONNECTED, VaultState.ACTIVE),
        ]


async def test_vault_folder_gone_deprovisions_after_n_probes_and_deletes_online_rps(
    tmp_path: Path, clock: FakeClock
) -> None:
    root = tmp_path / "vault"
    async with monitored(tmp_path, clock, rejections=2) as m:
        await registered(m, root)
        rp_ids = await m.add_online_rps(3)
        root.rename(tmp_path / "vault-away")
        first = await m.health.probe()
        assert key(first) == (Connectivity.DISCONNECTED, VaultState.ACTIVE)
        assert first.last_reason is ContactFailure.NOT_FOUND
        assert len(await m.catalog.list_online_rps()) == 3
        second = await m.health.probe()
        assert key(second) == (Connectivity.DISCONNECTED, VaultState.DEPROVISIONED)
        assert await m.catalog.list_online_rps() == []
        deleted = await m.catalog.list_online_rps(include_deleted=True)
        assert sorted(r.id for r in deleted) == rp_ids
        assert all(r.deleted_at == clock.now for r in deleted)
        alert = await m.open_alert()
        assert alert is not None and alert.severity is AlertSeverity.CRITICAL
        assert alert.details["vault_state"] == "deprovisioned"
        # The folder comes back with its header: the vault answers normally again.
        (tmp_path / "vault-away").rename(root)
        back = await m.health.probe()
        assert key(back) == (Connectivity.CONNECTED, VaultState.ACTIVE)
        assert await m.open_alert() is None
        assert await m.catalog.list_online_rps() == []  # they were deleted; they stay so


async def test_missing_header_counts_as_gone(tmp_path: Path, clock: FakeClock) -> None:
    root = tmp_path / "vault"
    async with monitored(tmp_path, clock, rejections=1) as m:
        await registered(m, root)
        header = await FolderBackend(root).get(HEADER_NAME)
        await FolderBackend(root).delete(HEADER_NAME)
        status = await m.health.probe()
        assert status.vault_state is VaultState.DEPROVISIONED
        assert status.last_reason is ContactFailure.NOT_FOUND
        assert status.last_error is not None and HEADER_NAME in status.last_error
        await FolderBackend(root).put(HEADER_NAME, header)
        assert (await m.health.probe()).connected


async def test_rejected_credential_expires_the_vault_until_it_is_accepted(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with monitored(tmp_path, clock, rejections=3) as m:
        await registered(m, tmp_path / "vault")
        m.faults.error = AuthError("folder vault", HEADER_NAME, "403 (injected)", status=403)
        for n in (1, 2):
            status = await m.health.probe()
            assert key(status) == (Connectivity.DISCONNECTED, VaultState.ACTIVE), n
            assert status.last_reason is ContactFailure.AUTHENTICATION
        # A transient failure between them neither counts nor breaks the run.
        m.faults.error = transient("timeout")
        assert (await m.health.probe()).vault_state is VaultState.ACTIVE
        m.faults.error = AuthError("folder vault", HEADER_NAME, "403 (injected)", status=403)
        assert (await m.health.probe()).vault_state is VaultState.EXPIRED
        assert m.changes[-1][1].vault_state is VaultState.EXPIRED
        m.faults.error = None
        assert key(await m.health.probe()) == (Connectivity.CONNECTED, VaultState.ACTIVE)


async def test_operations_count_as_one_rejection_between_probes(
    tmp_path: Path, clock: FakeClock
) -> None:
    root = tmp_path / "vault"
    async with monitored(tmp_path, clock, rejections=2) as m:
        await registered(m, root)
        backend = m.health.observe(FolderBackend(root))
        shutil.rmtree(root)
        for _ in range(5):  # parallel uploads failing together are one contact
            with pytest.raises(ContainerGone):
                await backend.put("data/00/" + "0" * 64, b"x")
        await m.health.settle()
        status = m.health.status()
        assert key(status) == (Connectivity.DISCONNECTED, VaultState.ACTIVE)
        # Only operations saw it: no alert until a probe confirms.
        assert await m.open_alert() is None
        confirmed = await m.health.probe()
        assert confirmed.vault_state is VaultState.DEPROVISIONED
        assert await m.open_alert() is not None


async def test_observed_operations_update_last_contact(tmp_path: Path, clock: FakeClock) -> None:
    root = tmp_path / "vault"
    async with monitored(tmp_path, clock) as m:
        await registered(m, root)
        clock.now += 3 * DAY
        backend = m.health.observe(FolderBackend(root))
        with pytest.raises(NotFound):  # an answer about an object is contact
            await backend.get("data/00/" + "0" * 64)
        assert m.health.status().last_success == clock.now
        # The sync (and every user of the registry's opener) is observed too.
        clock.now += DAY
        report = await sync_registered(m.registry, m.catalog)
        assert report.listed == 0 and m.health.status().last_success == clock.now
        # A backend for another place reports nothing about the registered vault.
        other = m.registry.opener({"kind": "folder", "path": str(tmp_path / "elsewhere")})
        with pytest.raises(ContainerGone):
            await other.get(HEADER_NAME)
        await m.health.settle()
        assert m.health.status().connected


async def test_header_state_is_read_and_followed(tmp_path: Path, clock: FakeClock) -> None:
    root = tmp_path / "vault"
    async with monitored(tmp_path, clock) as m:
        await registered(m, root)
        unlocked = await m.registry.unlocked()
        folder = FolderBackend(root)

        async def set_state(state: VaultState) -> None:
            header = VaultHeader.from_json(await folder.get(HEADER_NAME))
            await folder.put(HEADER_NAME, with_state(header, unlocked.keys, state).to_json())

        await set_state(VaultState.EXPIRED)
        status = await m.health.probe()
        assert key(status) == (Connectivity.CONNECTED, VaultState.EXPIRED)
        # Operations succeeding do not undo what the header says.
        await m.health.observe(folder).head(HEADER_NAME)
        assert m.health.status().vault_state is VaultState.EXPIRED
        await set_state(VaultState.ACTIVE)
        assert (await m.health.probe()).connected
        # A header changed without the key is refused as a whole: integrity, no state.
        raw = json.loads(await folder.get(HEADER_NAME))
        raw["state"] = "deprovisioned"
        await folder.put(HEADER_NAME, json.dumps(raw).encode())
        tampered = await m.health.probe()
        assert key(tampered) == (Connectivity.DISCONNECTED, VaultState.ACTIVE)
        assert tampered.last_reason is ContactFailure.INTEGRITY
        assert len(await m.catalog.list_online_rps()) == 0


async def test_state_survives_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    root = tmp_path / "vault"
    async with monitored(tmp_path, clock, rejections=1) as m:
        await registered(m, root)
        m.faults.error = AuthError("folder vault", HEADER_NAME, "403 (injected)", status=403)
        before = await m.health.probe()
        assert before.vault_state is VaultState.EXPIRED
        saved = json.loads(await m.catalog.get_server_state(STATE_KEY) or "{}")
        assert saved["vault_state"] == "expired" and saved["state_cause"] == "authentication"
        again = CloudHealth(m.catalog, m.registry, lambda: health_config(m.data_dir), clock)
        assert again.status().connectivity is Connectivity.NOT_REGISTERED  # not loaded yet
        await again.load()
        after = again.status()
        assert key(after) == key(before)
        assert (after.last_success, after.last_failure, after.last_reason) == (
            before.last_success,
            before.last_failure,
            ContactFailure.AUTHENTICATION,
        )
        await again.close()


async def test_a_failing_subscriber_is_logged_not_raised(tmp_path: Path, clock: FakeClock) -> None:
    async with monitored(tmp_path, clock) as m:

        async def broken(_old: CloudStatus, _new: CloudStatus) -> None:
            raise RuntimeError("subscriber bug")

        unsubscribe = m.health.subscribe(broken)
        with structlog.testing.capture_logs() as logs:
            await registered(m, tmp_path / "vault")
        events = [e["event"] for e in logs]
        assert "cloud_status_subscriber_failed" in events
        assert "cloud_status_changed" in events
        assert m.changes  # the other subscriber still ran
        unsubscribe()


async def test_observed_reports_each_outcome(tmp_path: Path) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.events: list[str] = []

        def on_contact(self) -> None:
            self.events.append("contact")

        def on_failure(self, exc: VaultBackendError) -> None:
            self.events.append(type(exc).__name__)

    rec = Recorder()
    root = tmp_path / "v"
    backend = Observed(FolderBackend(root), rec)
    await backend.ensure_container()
    await backend.put("a/b", b"1")
    await backend.put("a/c", b"2")
    assert [i.name async for i in backend.list("a/")] != []
    with pytest.raises(NotFound):
        await backend.get("nothing")
    with pytest.raises(ValueError):  # a bad name says nothing about the service
        await backend.get("../x")
    shutil.rmtree(root)
    with pytest.raises(ContainerGone):
        [i async for i in backend.list()]
    assert rec.events == ["contact"] * 5 + ["ContainerGone"]


async def probed_at(health: CloudHealth, t: float) -> CloudStatus:
    """Poll until the monitor's loop has probed at clock time `t` (it runs in a task)."""
    async with asyncio.timeout(30):
        for _ in itertools.count():
            status = health.status()
            if status.last_probe == t:
                return status
            await asyncio.sleep(0.02)
    raise AssertionError("unreachable")


async def test_run_probes_on_the_injected_clock(tmp_path: Path, clock: FakeClock) -> None:
    config = load_server_config(
        None,
        overrides={"server.data_dir": str(tmp_path / "server"), "scheduler.tick_seconds": "1"},
    )
    async with monitored(tmp_path, clock) as m:
        await registered(m, tmp_path / "vault")
        health = CloudHealth(
            m.catalog, m.registry, lambda: config, clock, probe_opener=faulty_opener(m.faults)
        )
        loop = asyncio.create_task(health.run())
        try:
            await probed_at(health, clock.now)  # the first round probes at once
            m.faults.error = RuntimeError("a bug below the backend")
            clock.now += 5 * 60  # one probe interval on the clock
            failed = await probed_at(health, clock.now)
            # Recorded as a finding, not raised out of the loop.
            assert failed.last_reason is ContactFailure.OTHER
            assert failed.last_error is not None and "a bug" in failed.last_error
            m.faults.error = None
            clock.now += 5 * 60
            await probed_at(health, clock.now)
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
            await health.close()
        assert health.status().connected
