"""Registration tokens, agents and data sources in the catalog."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import pytest

from agent.protocol import AGENT_ID_PATTERN
from server.catalog import (
    Catalog,
    CatalogValidationError,
    ConflictError,
    InvalidStateError,
    NotFoundError,
    TokenError,
)
from server.ids import AgentId
from tests.unit.server.catalog_fixture import T0, FakeClock, opened


async def _register(catalog: Catalog, hostname: str = "web01") -> tuple[AgentId, str]:
    token, _ = await catalog.create_agent_token(600)
    agent, secret, _ = await catalog.register_agent(token, None, hostname, "0.1")
    return agent.id, secret


# -- tokens --


async def test_only_the_tokens_hash_is_stored(tmp_path: Path, catalog: Catalog) -> None:
    token, expires_at = await catalog.create_agent_token(600)
    assert expires_at == T0 + 600
    assert len(token) >= 32
    with sqlite3.connect(tmp_path / "catalog.sqlite") as db:
        stored = db.execute("SELECT token_hash FROM agent_tokens").fetchall()
    assert stored == [(hashlib.sha256(token.encode()).hexdigest(),)]


async def test_token_is_single_use_with_a_clear_message(catalog: Catalog) -> None:
    token, _ = await catalog.create_agent_token(600)
    await catalog.redeem_agent_token(token, agent_id=AgentId("a1"))
    with pytest.raises(TokenError, match=r"already used .* by agent a1") as info:
        await catalog.redeem_agent_token(token, agent_id=AgentId("a2"))
    assert info.value.reason == "used"


async def test_unknown_token(catalog: Catalog) -> None:
    with pytest.raises(TokenError, match="not known") as info:
        await catalog.redeem_agent_token("nope", agent_id=AgentId("a1"))
    assert info.value.reason == "unknown"


async def test_token_expires_by_the_injected_clock(catalog: Catalog, clock: FakeClock) -> None:
    token, expires_at = await catalog.create_agent_token(60)
    clock.now = expires_at  # expiry is exclusive: at expires_at the token is dead
    with pytest.raises(TokenError, match="expired at 2023-11-14T22:14:20") as info:
        await catalog.redeem_agent_token(token, agent_id=AgentId("a1"))
    assert info.value.reason == "expired"
    clock.now = expires_at - 1  # an expired token was not consumed by the refusal
    await catalog.redeem_agent_token(token, agent_id=AgentId("a1"))


async def test_concurrent_redeems_on_one_catalog_have_one_winner(catalog: Catalog) -> None:
    token, _ = await catalog.create_agent_token(600)
    results = await asyncio.gather(
        *(catalog.register_agent(token, None, f"host{i}") for i in range(5)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(e, TokenError) and e.reason == "used" for e in losers)
    assert len(await catalog.list_agents()) == 1


async def test_concurrent_redeems_from_two_connections_have_one_winner(tmp_path: Path) -> None:
    """Two processes (here: two connections) redeeming one token: the conditional UPDATE
    inside BEGIN IMMEDIATE lets exactly one of them win."""
    path = tmp_path / "catalog.sqlite"
    async with opened(path) as first, opened(path) as second:
        for _ in range(5):
            token, _ = await first.create_agent_token(600)
            results = await asyncio.gather(
                first.redeem_agent_token(token, agent_id=AgentId("one")),
                second.redeem_agent_token(token, agent_id=AgentId("two")),
                return_exceptions=True,
            )
            assert sorted(type(r).__name__ for r in results) == ["NoneType", "TokenError"]


# -- agents --


async def test_register_and_authenticate(catalog: Catalog, clock: FakeClock) -> None:
    token, _ = await catalog.create_agent_token(600)
    agent, secret, command_key = await catalog.register_agent(token, None, "web01", "0.1")
    assert AGENT_ID_PATTERN.fullmatch(agent.id)
    assert len(agent.id) == 12
    assert (agent.name, agent.hostname, agent.version) == ("web01", "web01", "0.1")
    assert agent.created_at == clock.now
    assert agent.command_key == command_key
    assert command_key not in repr(agent)
    assert not agent.needs_registration
    assert not agent.online
    assert await catalog.authenticate_agent(agent.id, secret) == agent
    assert await catalog.authenticate_agent(agent.id, secret + "x") is None
    assert await catalog.authenticate_agent("nobody", secret) is None


async def test_refused_registration_leaves_the_token_unused(catalog: Catalog) -> None:
    await _register(catalog, "web01")
    token, _ = await catalog.create_agent_token(600)
    with pytest.raises(ConflictError, match="'web01' is already taken"):
        await catalog.register_agent(token, "web01", "otherhost")
    agent, _, _ = await catalog.register_agent(token, "web02", "otherhost")
    assert agent.name == "web02"


async def test_default_names_get_a_suffix(catalog: Catalog) -> None:
    await _register(catalog, "web01")
    second, _ = await _register(catalog, "web01")
    assert (await catalog.get_agent(second)).name == "web01-2"


async def test_agent_names_are_validated(catalog: Catalog) -> None:
    token, _ = await catalog.create_agent_token(600)
    with pytest.raises(CatalogValidationError, match="may not contain ':'"):
        await catalog.register_agent(token, "a:b", "host")
    with pytest.raises(CatalogValidationError, match="control characters"):
        await catalog.register_agent(token, "a\nb", "host")


async def test_presence(catalog: Catalog, clock: FakeClock) -> None:
    agent_id, _ = await _register(catalog)
    row = await catalog.set_agent_presence(agent_id, True, T0 + 10, version="0.2")
    assert (row.online, row.state_changed_at, row.last_seen_at, row.version) == (
        True,
        T0 + 10,
        T0 + 10,
        "0.2",
    )
    # A late "offline" older than the last change does not flip the state back.
    row = await catalog.set_agent_presence(agent_id, False, T0 + 5)
    assert (row.online, row.state_changed_at, row.last_seen_at) == (True, T0 + 10, T0 + 10)
    clock.now = T0 + 20
    row = await catalog.set_agent_presence(agent_id, False)
    assert (row.online, row.state_changed_at, row.version) == (False, T0 + 20, "0.2")
    with pytest.raises(NotFoundError, match="agent 'ghost' not found"):
        await catalog.set_agent_presence(AgentId("ghost"), True)


async def test_get_agent_by_id_or_name(catalog: Catalog) -> None:
    agent_id, _ = await _register(catalog, "web01")
    assert (await catalog.get_agent("web01")).id == agent_id
    assert (await catalog.get_agent(agent_id)).name == "web01"
    with pytest.raises(NotFoundError) as info:
        await catalog.get_agent("web99")
    assert (info.value.kind, info.value.ident) == ("agent", "web99")


async def test_removed_agent_keeps_orphaned_data_sources(catalog: Catalog) -> None:
    agent_id, secret = await _register(catalog, "web01")
    ds = await catalog.add_data_source(agent_id, None, ["/srv"])
    assert await catalog.remove_agent(agent_id) == []
    assert await catalog.remove_agent(agent_id) == []  # twice is a no-op
    assert await catalog.authenticate_agent(agent_id, secret) is None
    assert await catalog.list_agents() == []
    assert (await catalog.list_agents(include_removed=True))[0].removed_at is not None
    [orphan] = await catalog.list_data_sources()
    assert orphan.id == ds.id
    assert orphan.orphaned
    # The name is free again, and the orphan is still reachable by the old agent's id.
    new_id, _ = await _register(catalog, "web01")
    assert (await catalog.get_agent("web01")).id == new_id
    assert (await catalog.get_data_source(f"{agent_id}:/srv")).id == ds.id


async def test_remove_agent_with_its_data(catalog: Catalog) -> None:
    agent_id, _ = await _register(catalog)
    await catalog.add_data_source(agent_id, None, ["/srv"])
    await catalog.remove_agent(agent_id, delete_data=True)
    assert await catalog.list_data_sources() == []
    assert len(await catalog.list_data_sources(include_removed=True)) == 1


# -- data sources --


async def test_data_sources(catalog: Catalog, clock: FakeClock) -> None:
    agent_id, _ = await _register(catalog, "web01")
    ds = await catalog.add_data_source(agent_id, None, ["/srv", "/etc"], ["*.tmp"])
    assert ds.id.startswith("ds-")
    assert (ds.name, ds.kind, ds.ref) == ("/srv", "files", "web01:/srv")
    assert ds.spec == {"paths": ["/srv", "/etc"], "excludes": ["*.tmp"]}
    assert ds.created_at == clock.now
    assert await catalog.get_data_source(ds.id) == ds
    assert await catalog.get_data_source("web01:/srv") == ds
    named = await catalog.add_data_source(agent_id, "home", ["/home"])
    assert [d.name for d in await catalog.list_data_sources(agent_id)] == ["/srv", "home"]
    with pytest.raises(ConflictError, match="already has a data source named '/srv'"):
        await catalog.add_data_source(agent_id, None, ["/srv"])
    assert await catalog.remove_data_source(named.id) == []
    with pytest.raises(NotFoundError, match="data source 'web01:home' not found"):
        await catalog.get_data_source("web01:home")
    assert (await catalog.get_data_source(named.id)).removed_at == clock.now
    await catalog.add_data_source(agent_id, "home", ["/home"])  # the name is free again


@pytest.mark.parametrize(
    ("paths", "excludes", "message"),
    [
        ([], [], "at least one path"),
        (["srv"], [], "must be absolute"),
        (["/srv\0x"], [], "must be absolute, no NUL"),
        ("/srv", [], "not one string"),
        (["/srv"], ["a\0"], "no NUL"),
    ],
)
async def test_data_source_spec_is_validated(
    catalog: Catalog, paths: list[str], excludes: list[str], message: str
) -> None:
    agent_id, _ = await _register(catalog)
    with pytest.raises(CatalogValidationError, match=message):
        await catalog.add_data_source(agent_id, None, paths, excludes)


async def test_data_source_needs_a_live_agent(catalog: Catalog) -> None:
    with pytest.raises(NotFoundError, match="agent 'ghost'"):
        await catalog.add_data_source(AgentId("ghost"), None, ["/srv"])
    agent_id, _ = await _register(catalog)
    await catalog.remove_agent(agent_id)
    with pytest.raises(InvalidStateError, match="is removed"):
        await catalog.add_data_source(agent_id, None, ["/srv"])


async def test_tokens_never_start_with_a_dash(tmp_path: Path) -> None:
    """Regression: a token_urlsafe token starting with '-' was read as an option by
    `stockade-agent register --token T` (argparse), failing registration at random."""
    async with opened(tmp_path / "catalog.sqlite") as catalog:
        for _ in range(200):
            token, _ = await catalog.create_agent_token(60)
            assert token.startswith("sat_")
