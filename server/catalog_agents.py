"""Catalog tables `agent_tokens` and `agents`: registration, authentication, presence.

Registration: an operator creates a one-time token (only its SHA-256 is stored); the agent
presents it once, and in ONE transaction the token is marked used and the agent row is
written with the SHA-256 of a fresh secret and a fresh command key. Any failure rolls back
both, so a refused registration leaves the token usable. The secret and the command key
are returned once, to be sent to the agent; neither the token nor the secret is logged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime

import structlog

from server.catalog_base import CatalogBase, Tx
from server.catalog_errors import (
    CatalogValidationError,
    ConflictError,
    InvalidStateError,
    NotFoundError,
    TokenError,
)
from server.catalog_rows import AGENT_COLUMNS, AgentRow, agent_from_row, check_name
from server.catalog_sources import remove_data_source_rows
from server.ids import AgentId, new_agent_id
from storage_pool import RecoveryPointId

__all__ = ["AgentTables", "find_agent", "free_agent_name", "insert_agent", "secret_hash"]

log = structlog.get_logger()

# Agent names appear in "agentname:dsname" references, so they may not hold ':'.
AGENT_NAME_FORBIDS = ":"
_NO_CREDENTIAL = "0" * 64  # compared against when the agent has none, to do the same work


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


async def find_agent(tx: Tx, ref: str) -> AgentRow | None:
    """By id (removed agents too), else by name among agents not removed."""
    row = await tx.one(f"SELECT {AGENT_COLUMNS} FROM agents a WHERE a.id = ?", (ref,))
    if row is None:
        row = await tx.one(
            f"SELECT {AGENT_COLUMNS} FROM agents a WHERE a.name = ? AND a.removed_at IS NULL",
            (ref,),
        )
    return None if row is None else agent_from_row(row)


async def _agent_by_id(tx: Tx, agent_id: str) -> AgentRow:
    agent = await find_agent(tx, agent_id)
    if agent is None or agent.id != agent_id:
        raise NotFoundError("agent", agent_id)
    return agent


async def free_agent_name(tx: Tx, base: str) -> str:
    """`base`, or `base-2`, `base-3`... whichever no agent (not removed) holds."""
    name, n = base, 1
    while await tx.one("SELECT 1 FROM agents WHERE name = ? AND removed_at IS NULL", (name,)):
        n += 1
        name = f"{base}-{n}"
    return name


async def insert_agent(
    tx: Tx,
    agent_id: AgentId,
    name: str,
    hostname: str,
    *,
    credential_hash: str | None,
    command_key: str | None,
    version: str | None,
) -> None:
    await tx.run(
        "INSERT INTO agents (id, name, hostname, credential_hash, command_key, created_at,"
        " version) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (agent_id, name, hostname, credential_hash, command_key, tx.now, version),
    )


async def _redeem(tx: Tx, token: str, agent_id: AgentId) -> None:
    """Mark the token used by `agent_id`, or raise TokenError saying why it is refused."""
    digest = secret_hash(token) if isinstance(token, str) else ""
    # One conditional UPDATE: of two concurrent redeemers only one can match the row.
    changed = await tx.run(
        "UPDATE agent_tokens SET used_at = ?, agent_id = ?"
        " WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
        (tx.now, agent_id, digest, tx.now),
    )
    if changed:
        return
    row = await tx.one(
        "SELECT used_at, expires_at, agent_id FROM agent_tokens WHERE token_hash = ?", (digest,)
    )
    if row is None:
        raise TokenError(
            "unknown",
            "registration token is not known: it was mistyped or issued by another server",
        )
    if row["used_at"] is not None:
        raise TokenError(
            "used",
            f"registration token was already used at {_iso(row['used_at'])} by agent"
            f" {row['agent_id']}: a token registers one agent; create a new one",
        )
    raise TokenError(
        "expired", f"registration token expired at {_iso(row['expires_at'])}: create a new one"
    )


class AgentTables(CatalogBase):
    async def create_agent_token(self, ttl_s: float) -> tuple[str, float]:
        """A new one-time registration token and its expiry (unix seconds)."""
        if not ttl_s > 0:
            raise CatalogValidationError(f"token lifetime must be positive, got {ttl_s!r}")
        # A prefix names what it is, and a token that began with '-' would be read as an
        # option by `stockade-agent register --token T` (argparse) and by the CLI.
        token = "sat_" + secrets.token_urlsafe(24)
        async with self._write() as tx:
            expires_at = tx.now + ttl_s
            await tx.run(
                "INSERT INTO agent_tokens (token_hash, created_at, expires_at) VALUES (?, ?, ?)",
                (secret_hash(token), tx.now, expires_at),
            )
        log.info("agent_token_created", expires_at=expires_at)
        return token, expires_at

    async def redeem_agent_token(self, token: str, *, agent_id: AgentId) -> None:
        """Use the token up for `agent_id`; TokenError if unknown, used or expired."""
        async with self._write() as tx:
            await _redeem(tx, token, agent_id)

    async def register_agent(
        self,
        token: str,
        name: str | None,
        hostname: str,
        version: str | None = None,
        *,
        agent_id: AgentId | None = None,
    ) -> tuple[AgentRow, str, str]:
        """Redeem `token` and register an agent; returns (row, secret, command key).

        `name` defaults to the hostname (with a -2, -3... suffix if taken); an explicit name
        that is taken raises ConflictError. With `agent_id`, an agent rebuilt from the pool
        (`needs_registration`) gets its credential back under its old id."""
        check_name("host", hostname)
        if name is not None:
            check_name("agent", name, forbid=AGENT_NAME_FORBIDS)
        secret = secrets.token_urlsafe(32)
        command_key = secrets.token_hex(32)
        async with self._write() as tx:
            if agent_id is None:
                new_id = new_agent_id()
                await _redeem(tx, token, new_id)
                if name is None:
                    base = hostname.replace(":", "-")
                    name = await free_agent_name(tx, base)
                elif await tx.one(
                    "SELECT 1 FROM agents WHERE name = ? AND removed_at IS NULL", (name,)
                ):
                    raise ConflictError("agent", name, f"agent name {name!r} is already taken")
                await insert_agent(
                    tx,
                    new_id,
                    name,
                    hostname,
                    credential_hash=secret_hash(secret),
                    command_key=command_key,
                    version=version,
                )
            else:
                old = await _agent_by_id(tx, agent_id)
                if old.removed_at is not None or not old.needs_registration:
                    raise InvalidStateError(
                        "agent",
                        agent_id,
                        f"agent {agent_id} is {'removed' if old.removed_at else 'registered'}:"
                        " only an agent rebuilt from the pool can register again",
                    )
                await _redeem(tx, token, agent_id)
                new_id = agent_id
                await tx.run(
                    "UPDATE agents SET credential_hash = ?, command_key = ?, hostname = ?,"
                    " version = coalesce(?, version) WHERE id = ?",
                    (secret_hash(secret), command_key, hostname, version, agent_id),
                )
            agent = await _agent_by_id(tx, new_id)
        log.info("agent_registered", agent_id=agent.id, agent_name=agent.name)
        return agent, secret, command_key

    async def authenticate_agent(self, agent_id: str, secret: str) -> AgentRow | None:
        """The agent if `secret` is its credential; None for unknown, removed, rebuilt
        (needs_registration) agents and wrong secrets."""
        async with self._read() as tx:
            row = await tx.one(
                "SELECT credential_hash, removed_at FROM agents WHERE id = ?", (agent_id,)
            )
            stored = None if row is None or row["removed_at"] is not None else row[0]
            given = secret_hash(secret) if isinstance(secret, str) else ""
            same = hmac.compare_digest(given, stored or _NO_CREDENTIAL)
            if stored is None or not same:
                return None
            return await _agent_by_id(tx, agent_id)

    async def get_agent(self, id_or_name: str) -> AgentRow:
        async with self._read() as tx:
            agent = await find_agent(tx, id_or_name)
        if agent is None:
            raise NotFoundError("agent", id_or_name)
        return agent

    async def list_agents(self, *, include_removed: bool = False) -> list[AgentRow]:
        where = "" if include_removed else "WHERE a.removed_at IS NULL"
        async with self._read() as tx:
            rows = await tx.all(f"SELECT {AGENT_COLUMNS} FROM agents a {where} ORDER BY a.name")
        return [agent_from_row(r) for r in rows]

    async def set_agent_presence(
        self, agent_id: AgentId, online: bool, at: float | None = None, version: str | None = None
    ) -> AgentRow:
        """Record that the agent went online/offline at `at` (default: now).

        A report older than the last state change does not flip the state back (retained
        and will messages may arrive late), but still counts as the agent being seen."""
        async with self._write() as tx:
            params = {"id": agent_id, "on": int(online), "at": tx.now if at is None else at}
            params["version"] = version
            changed = await tx.run(
                "UPDATE agents SET"
                " online = CASE WHEN :at >= coalesce(state_changed_at, 0) THEN :on"
                "   ELSE online END,"
                " state_changed_at = CASE WHEN :at >= coalesce(state_changed_at, 0)"
                "   AND online != :on THEN :at ELSE state_changed_at END,"
                " last_seen_at = max(coalesce(last_seen_at, :at), :at),"
                " version = coalesce(:version, version)"
                " WHERE id = :id",
                params,
            )
            if not changed:
                raise NotFoundError("agent", agent_id)
            return await _agent_by_id(tx, agent_id)

    async def remove_agent(
        self, agent_id: AgentId, *, delete_data: bool = False
    ) -> list[RecoveryPointId]:
        """Soft-delete the agent and cancel its unfinished jobs.

        Its data sources stay listed (orphaned) with their recovery points, unless
        `delete_data`: then they are removed and their RP rows deleted, and the returned RP
        ids are the ones the caller must delete from the pool. Removing twice is a no-op."""
        async with self._write() as tx:
            agent = await _agent_by_id(tx, agent_id)
            if agent.removed_at is not None:
                return []
            await tx.run(
                "UPDATE agents SET removed_at = ?, online = 0 WHERE id = ?", (tx.now, agent_id)
            )
            await tx.run(
                "UPDATE jobs SET state = 'cancelled', error = 'agent removed', ended_at = :now,"
                " updated_at = :now WHERE agent_id = :id AND state IN ('queued', 'running')",
                {"now": tx.now, "id": agent_id},
            )
            dropped: list[RecoveryPointId] = []
            if delete_data:
                for row in await tx.all(
                    "SELECT id FROM data_sources WHERE agent_id = ? AND removed_at IS NULL",
                    (agent_id,),
                ):
                    dropped += await remove_data_source_rows(tx, row[0], delete_data=True)
        log.info("agent_removed", agent_id=agent_id, recovery_points_dropped=len(dropped))
        return dropped
