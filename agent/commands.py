"""Checking and parsing the commands the server sends on ``.../cmd`` (pure, no I/O).

A command is acted on only when all of these hold, in this order (the first failure names
the reason, which the caller logs and drops the message with; nothing is answered, so a
forger learns nothing):

1. the payload decodes as a protocol message of a ``cmd.*`` type;
2. it is addressed to this agent (``agent_id``) and came on this agent's ``cmd`` topic;
3. ``sig`` is a valid HMAC-SHA256 under the command key from registration;
4. it has not expired (``expires_at`` in the past; a missing ``expires_at`` is refused:
   a replayed command must not stay valid forever);
5. it carries a ``job_id`` and a well-formed body.

Bodies: ``cmd.backup`` ``{data_source_id, paths, excludes}``; ``cmd.restore`` ``{rp_id,
items, target_path, conflict}``; ``cmd.cancel`` ``{job_id}`` (the job to cancel; the
envelope's ``job_id`` may be that job's too).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent import protocol

__all__ = [
    "BackupCommand",
    "CancelCommand",
    "Command",
    "CommandRejected",
    "RestoreCommand",
    "check_command",
]


class CommandRejected(ValueError):
    """A command that must be dropped; the message says why."""


@dataclass(frozen=True, slots=True)
class BackupCommand:
    job_id: str
    data_source_id: str
    paths: tuple[str, ...]
    excludes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RestoreCommand:
    job_id: str
    rp_id: str
    items: tuple[str, ...]
    target_path: str
    conflict: str


@dataclass(frozen=True, slots=True)
class CancelCommand:
    job_id: str  # the job to cancel


Command = BackupCommand | RestoreCommand | CancelCommand


def check_command(
    raw: bytes, *, topic: str, agent_id: str, key: bytes, now: float
) -> tuple[protocol.Message, Command]:
    """Verify and parse one command payload; CommandRejected says why it is refused."""
    try:
        msg = protocol.decode_message(raw)
    except protocol.ProtocolError as err:
        raise CommandRejected(f"malformed: {err}") from err
    if not msg.type.startswith("cmd."):
        raise CommandRejected(f"{msg.type} is not a command")
    if msg.agent_id != agent_id or topic != protocol.topic(agent_id, "cmd"):
        raise CommandRejected(f"addressed to agent {msg.agent_id!r} on {topic!r}")
    if not msg.check_signature(key):
        raise CommandRejected("unsigned or bad signature" if msg.sig else "unsigned")
    if msg.expires_at is None:
        raise CommandRejected("no expiry")
    if msg.expired(now):
        raise CommandRejected(f"expired {now - msg.expires_at:.0f} s ago")
    if not msg.job_id:
        raise CommandRejected("no job_id")
    try:
        return msg, _parse(msg)
    except protocol.ProtocolError as err:
        raise CommandRejected(f"bad {msg.type} body: {err}") from err


def _str(body: dict[str, object], key: str) -> str:
    value = protocol.body_str(body, key)
    assert value is not None  # not optional: body_str raised otherwise
    return value


def _parse(msg: protocol.Message) -> Command:
    body = dict(msg.body)
    job_id = msg.job_id
    assert job_id is not None
    if msg.type == protocol.CMD_BACKUP:
        paths = protocol.body_str_list(body, "paths")
        if not paths:
            raise protocol.ProtocolError("field 'paths' is empty")
        if any(not p.startswith("/") for p in paths):
            raise protocol.ProtocolError("every path must be absolute")
        return BackupCommand(
            job_id=job_id,
            data_source_id=_str(body, "data_source_id"),
            paths=tuple(paths),
            excludes=tuple(protocol.body_str_list(body, "excludes")),
        )
    if msg.type == protocol.CMD_RESTORE:
        conflict = protocol.body_str(body, "conflict", optional=True) or "overwrite"
        if conflict not in protocol.CONFLICT_MODES:
            raise protocol.ProtocolError(f"unknown conflict mode {conflict!r}")
        target = protocol.body_str(body, "target_path", optional=True) or ""
        if target and not target.startswith("/"):
            raise protocol.ProtocolError("target_path must be absolute")
        return RestoreCommand(
            job_id=job_id,
            rp_id=_str(body, "rp_id"),
            items=tuple(protocol.body_str_list(body, "items")),
            target_path=target,
            conflict=conflict,
        )
    if msg.type == protocol.CMD_CANCEL:
        target_job = protocol.body_str(body, "job_id", optional=True) or job_id
        return CancelCommand(job_id=target_job)
    raise protocol.ProtocolError(f"unknown command {msg.type}")
