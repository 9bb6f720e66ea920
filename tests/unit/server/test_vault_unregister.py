"""Unregister-Vault and the one online-RP listing over the real aiohttp application
(`make_app`) on loopback, a real catalog and pool, a real folder vault and a real
connectivity monitor (server/cloud_health.py, loaded, not probing).

Refusals leave everything as it was: no PIN (403), a queued job of each kind that uses the
vault (409 naming it; the PIN is not used up), a vault sync in progress (409). Jobs that
never touch the vault (a disk verify) do not block. Accepted: the monitor says
not_registered at once, the catalog's online RPs stay listed with ``vault_registered``
false, and registering the same vault again brings them back. A rolled-back header is
still refused after an unregistration (the former-vault record keeps the floor).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from server.app import make_app
from server.catalog import Catalog, JobKind, JobState
from server.catalog_rows import DataSourceRow, JobRow
from server.cli.main import main
from server.cloud_health import CloudHealth
from server.cloud_status import Connectivity
from server.config import load_server_config
from server.context import ServerContext
from server.operator_vault import registry_for
from server.vault_state import registration_path
from server.vault_unregister import vault_job
from storage_pool.vault.folder import FolderBackend
from storage_pool.vault.format import HEADER_NAME
from storage_pool.vault.format_errors import RollbackError
from tests.unit.pool.pool_opener import PoolOpener
from tests.unit.server.catalog_fixture import FakeClock
from tests.unit.server.vault_fixture import OTHER_PASSPHRASE, PASSPHRASE, folder_spec, registry

TOKEN = "operator-token-unregister"
MiB = 1 << 20


@dataclass
class Site:
    srv: TestServer
    ctx: ServerContext
    health: CloudHealth
    ds: DataSourceRow
    vault: Path

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method,
                self.srv.make_url(f"/api/v1{path}"),
                json=body,
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as resp,
        ):
            return resp.status, await resp.json()

    async def register(self) -> None:
        status, creds = await self.call("POST", "/vaults", {"backend": folder_spec(self.vault)})
        assert status == 201, creds
        status, doc = await self.call(
            "POST", "/vault/registration", {"credentials": creds, "passphrase": PASSPHRASE}
        )
        assert status == 201, doc

    async def pin(self) -> str:
        status, doc = await self.call("POST", "/security-pins")
        assert status == 201, doc
        pin: str = doc["pin"]
        return pin

    async def unregister(self, pin: str | None) -> tuple[int, Any]:
        return await self.call(
            "DELETE", "/vault/registration", {} if pin is None else {"security_pin": pin}
        )

    async def cloud_rps(self, query: str = "") -> tuple[int, Any]:
        return await self.call("GET", f"/recovery-points?tier=cloud{query}")


@pytest.fixture
async def site(tmp_path: Path, catalog: Catalog, pools: PoolOpener) -> AsyncIterator[Site]:
    data = tmp_path / "data"
    config = load_server_config(
        None, overrides={"server.data_dir": str(data), "scratch.min_bytes": str(8 * MiB)}
    )
    ctx = ServerContext(
        config=config,
        catalog=catalog,
        pool=await pools.create("unregister-pool"),
        operator_token=TOKEN,
        ca_pem=b"",
        mqtt_url="mqtt://127.0.0.1:1",
        server_url="http://127.0.0.1:1",
    )
    health = CloudHealth(catalog, registry_for(ctx), lambda: config, time.time)
    await health.load()
    ctx.cloud = health
    token, _ = await catalog.create_agent_token(600)
    agent, _, _ = await catalog.register_agent(token, None, "web01")
    ds = await catalog.add_data_source(agent.id, "files", ["/srv"], [])
    srv = TestServer(make_app(ctx), host="127.0.0.1")
    async with srv:
        yield Site(srv, ctx, health, ds, tmp_path / "vault")
    await health.close()


async def _vault_jobs(s: Site) -> list[JobRow]:
    cat = s.ctx.catalog
    return [
        await cat.create_server_job(JobKind.ONLINE_BACKUP, {}, data_source_id=s.ds.id),
        await cat.create_job(JobKind.RESTORE, s.ds.agent_id, s.ds.id, {"from_cloud": True}),
        await cat.create_server_job(JobKind.VERIFY, {"tier": "cloud"}),
        await cat.create_server_job(JobKind.GC, {"tier": "cloud"}),
    ]


async def test_which_jobs_use_the_vault(site: Site) -> None:
    cat = site.ctx.catalog
    assert [vault_job(j) for j in await _vault_jobs(site)] == [
        "online backup",
        "restore from cloud",
        "cloud verify",
        "cloud garbage collection",
    ]
    others = [
        await cat.create_job(JobKind.RESTORE, site.ds.agent_id, site.ds.id, {}),
        await cat.create_job(JobKind.BACKUP, site.ds.agent_id, site.ds.id, {}),
        await cat.create_server_job(JobKind.VERIFY, {"tier": "disk"}),
        await cat.create_server_job(JobKind.GC, {}),
        await cat.create_server_job(JobKind.PRUNE, {}),
    ]
    assert [vault_job(j) for j in others] == [None] * len(others)


async def _refused_while_in_use(s: Site, pin: str) -> None:
    """Each queued job that uses the vault, then a sync, refuses with 409 and its name."""
    left = {j.id: j for j in await _vault_jobs(s)}
    while left:  # each refusal names one of them; cancelled, the next one is named
        status, doc = await s.unregister(pin)
        assert status == 409, doc
        (named,) = [j for j in left.values() if j.id in doc["error"]]
        assert f"{vault_job(named)} job {named.id} is queued" in doc["error"], doc
        await s.ctx.catalog.transition_job(named.id, JobState.CANCELLED, error="test")
        del left[named.id]
    with registry_for(s.ctx).in_use("vault sync"):
        status, doc = await s.unregister(pin)
    assert status == 409 and "vault sync" in doc["error"], doc


async def test_refusals_change_nothing_then_unregister_and_register_again(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    s = site
    status, doc = await s.unregister(await s.pin())
    assert (status, doc["error"]) == (
        409,
        "this server is not registered with a vault: run Register-Vault",
    )
    status, doc = await s.cloud_rps("&source=vault")
    assert status == 409 and "Register-Vault" in doc["error"]

    await s.register()
    await s.ctx.catalog.add_online_rp(
        "data/aa/manifest-1", s.ds.id, disk_rp_id="rp-1", source_created_at=100.0,
        created_at=200.0, logical_bytes=5,
    )  # fmt: skip
    status, (row,) = await s.cloud_rps()
    assert status == 200
    vault_id = row["vault_id"]
    assert row["vault_registered"] is True and vault_id
    assert (row["created_at"], row["copied_at"], row["deleted_at"]) == (100.0, 200.0, None)
    assert (row["agent_name"], row["data_source_name"], row["tier"]) == ("web01", "files", "cloud")

    status, doc = await s.unregister(None)
    assert status == 403 and "security PIN is missing" in doc["error"]

    pin = await s.pin()
    await s.ctx.catalog.create_server_job(JobKind.VERIFY, {"tier": "disk"})  # not in the way
    await _refused_while_in_use(s, pin)
    assert registration_path(s.ctx.config.data_dir).exists()
    assert s.health.status().connectivity is not Connectivity.NOT_REGISTERED

    # The same PIN (no refusal used it), through the CLI (synchronous: in a worker thread
    # while this loop serves it).
    url = str(s.srv.make_url("")).rstrip("/")
    capsys.readouterr()
    args = ["Unregister-Vault", "-SecurityPin", pin, "-Server", url, "-Token", TOKEN]
    code = await asyncio.to_thread(main, args)
    out = capsys.readouterr().out  # the server's log lines share this process's stdout
    assert code == 0
    assert f"\nUnregistered from vault {vault_id} (folder {s.vault}).\n" in f"\n{out}", out
    assert "1 online recovery point(s) stay listed" in out and "Register-Vault" in out
    assert s.health.status().connectivity is Connectivity.NOT_REGISTERED
    assert not registration_path(s.ctx.config.data_dir).exists()
    assert await FolderBackend(s.vault).head(HEADER_NAME) is not None
    status, (row,) = await s.cloud_rps()
    assert (row["vault_registered"], row["vault_id"]) == (False, vault_id)
    status, doc = await s.call("GET", "/vault")
    assert doc["registered"] is False

    await s.register()
    assert s.health.status().registered
    # source=vault: the vault holds no such manifest, so the sync marks the row deleted;
    # deleted=1 still shows it.
    status, rows = await s.cloud_rps("&source=vault")
    assert (status, rows) == (200, [])
    status, (row,) = await s.cloud_rps("&deleted=1")
    assert row["deleted_at"] is not None and row["vault_registered"] is True


async def test_listing_options_are_checked(site: Site) -> None:
    for query, fragment in [
        ("/recovery-points?source=vault", "add tier=cloud"),
        ("/recovery-points?deleted=1", "add tier=cloud"),
        ("/recovery-points?tier=cloud&source=elsewhere", "source must be one of catalog, vault"),
    ]:
        status, doc = await site.call("GET", query)
        assert status == 400 and fragment in doc["error"], (query, doc)
    status, doc = await site.call("GET", "/vault/recovery-points")
    assert status == 404, doc  # the second listing is gone


async def test_former_vault_keeps_the_rollback_floor(tmp_path: Path, clock: FakeClock) -> None:
    """After Unregister-Vault, registering the same vault must still refuse a header older
    than the newest this server saw (the generation floor lived in the registration file)."""
    reg = registry(tmp_path / "data", clock)
    vault = tmp_path / "vault"
    creds = (await reg.new_vault(folder_spec(vault))).to_doc()
    await reg.register(creds, PASSPHRASE)
    old_header = await FolderBackend(vault).get(HEADER_NAME)

    async def no_pin() -> None:
        return None

    await reg.change_passphrase(OTHER_PASSPHRASE, no_pin)

    async def allow(_reg: object) -> None:
        return None

    gone = await reg.unregister(allow)
    former = await reg.former()
    assert former is not None and former.vault_id == gone.vault_id
    assert former.header_generation == 2
    assert await reg.registration() is None
    await FolderBackend(vault).put(HEADER_NAME, old_header)  # someone rolls the header back
    creds = (await reg.new_vault(folder_spec(vault))).to_doc()
    with pytest.raises(RollbackError):
        await reg.register(creds, PASSPHRASE)
    assert await reg.registration() is None
