"""Wire formats shared by the server and the agents: MQTT control messages, HTTP data plane.

This module is a leaf: it imports only the standard library and nothing of Stockade, so the
server can import it without pulling in the agent (enforced by import-linter and
tests/unit/test_import_layers.py). Everything here is pure: no I/O.

MQTT (control plane)
--------------------
Topics carry a protocol version: ``stockade/v1/agents/{agent_id}/{kind}`` where ``kind`` is
``cmd`` (server -> agent), ``events`` (agent -> server) or ``state`` (retained, with a
last-will "offline"). The broker's ACL confines each agent to its own subtree.

Every message is one JSON object (UTF-8, at most ``MAX_MESSAGE_BYTES``)::

    {"schema": "stockade.v1.<type>", "msg_id": "<hex>", "job_id": "<id>" | null,
     "agent_id": "<id>", "issued_at": <unix s>, "expires_at": <unix s> | null,
     "body": {...}, "sig": "<hex>" | null}

Commands (server -> agent, ``cmd``) are signed: ``sig`` is HMAC-SHA256 under the agent's
command key (handed out at registration) over the canonical JSON of the message without
``sig`` (sorted keys, no spaces). An agent drops a command that is unsigned, badly signed,
addressed to another agent or past ``expires_at``. Handlers are idempotent by ``job_id``:
QoS 1 may deliver a message twice.

Paths travel as ``os.fsdecode`` strings (surrogateescape), so non-UTF-8 names survive JSON
(``json`` escapes lone surrogates as ``\\udcXX``); the receiver calls ``os.fsencode``.

HTTP (data plane, agent <-> server, TLS, ``Authorization: Bearer <agent_id>:<secret>``)
-------------------------------------------------------------------------------------
All paths under ``/api/v1/agent``. Errors are JSON ``{"error": "<message>"}`` with a 4xx/5xx.

``POST /sessions`` JSON ``{"job_id"}`` -> ``{"session_id", "data_source_id", "parent_rp_id",
  "chunker": {"min_size", "avg_size", "max_size"}, "compression_level"}``: opens a pool session
  for a running backup job of this agent.
``POST /sessions/{sid}/missing`` body: N chunk ids (32 raw bytes each) -> body: the missing
  ones, concatenated, in request order. An id the agent may not reference (not uploaded in this
  session, not in its own earlier recovery points) is reported missing, so dedup never tells
  an agent what another agent stored.
``POST /sessions/{sid}/chunks`` body: records ``id (32) | frame length (u32 BE) | frame`` where
  a frame is a storage_pool framing frame (zstd). The server decodes and re-hashes each one;
  a mismatch is 422 naming the chunk id. -> ``{"chunks", "new_chunks", "new_stored_bytes"}``.
``POST /sessions/{sid}/entries`` body: msgpack stream of manifest entries (``Entry.to_wire``)
  in manifest order -> ``{"entries"}``.
``POST /sessions/{sid}/commit`` JSON ``{"warnings": n, "stats": {...}}`` -> ``{"rp_id"}``.
``DELETE /sessions/{sid}``: abort (idempotent).
``GET /restores/{job_id}/entries``: msgpack stream of the entries a running restore job
  restores (already filtered to the selected items), for the job's target agent only.
``POST /restores/{job_id}/chunks`` body: N chunk ids -> body: records ``id | len | frame``,
  only for chunks the job's recovery point references.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

__all__ = [
    "AGENT_API",
    "AGENT_ID_PATTERN",
    "CHUNK_ID_LEN",
    "JOB_STATES",
    "MAX_MESSAGE_BYTES",
    "SERVER_USERNAME",
    "TOPIC_KINDS",
    "TOPIC_PREFIX",
    "Message",
    "ProtocolError",
    "TopicKind",
    "decode_message",
    "encode_message",
    "iter_id_list",
    "iter_records",
    "pack_ids",
    "pack_record",
    "parse_topic",
    "topic",
]

TOPIC_PREFIX: Final = "stockade/v1/agents"
SCHEMA_PREFIX: Final = "stockade.v1."
SERVER_USERNAME: Final = "stockade-server"
AGENT_API: Final = "/api/v1/agent"
MAX_MESSAGE_BYTES: Final = 256 * 1024
CHUNK_ID_LEN: Final = 32
MAX_IDS_PER_REQUEST: Final = 100_000
MAX_RECORD_FRAME: Final = 64 * 1024 * 1024

TopicKind = Literal["cmd", "events", "state"]
TOPIC_KINDS: Final[frozenset[str]] = frozenset(get_args(TopicKind))

# An agent id is one MQTT topic level and a broker username (ACL `%u`): no '/', '+', '#',
# whitespace or non-ASCII, so it can never widen a subscription or an ACL pattern.
AGENT_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOPIC_RE: Final = re.compile(r"stockade/v1/agents/([A-Za-z0-9_-]{1,64})/(cmd|events|state)")

# Message types. cmd.*: server -> agent; event.*: agent -> server; state: retained presence.
CMD_BACKUP: Final = "cmd.backup"
CMD_RESTORE: Final = "cmd.restore"
CMD_CANCEL: Final = "cmd.cancel"
EVENT_ACCEPTED: Final = "event.accepted"
EVENT_PROGRESS: Final = "event.progress"
EVENT_RESULT: Final = "event.result"
EVENT_HEARTBEAT: Final = "event.heartbeat"
STATE: Final = "state"
MESSAGE_TYPES: Final = frozenset(
    {
        CMD_BACKUP,
        CMD_RESTORE,
        CMD_CANCEL,
        EVENT_ACCEPTED,
        EVENT_PROGRESS,
        EVENT_RESULT,
        EVENT_HEARTBEAT,
        STATE,
    }
)

JobState = Literal[
    "queued", "running", "succeeded", "succeeded_with_warnings", "failed", "cancelled"
]
JOB_STATES: Final[tuple[str, ...]] = get_args(JobState)
FINAL_STATES: Final = frozenset({"succeeded", "succeeded_with_warnings", "failed", "cancelled"})
# What an agent may report in event.result.
RESULT_STATUSES: Final = frozenset({"succeeded", "succeeded_with_warnings", "failed", "cancelled"})
CONFLICT_MODES: Final = frozenset({"overwrite", "skip", "rename"})


class ProtocolError(ValueError):
    """A message or record that does not follow this module's formats."""


def topic(agent_id: str, kind: str) -> str:
    """Return the MQTT topic of ``kind`` for ``agent_id``.

    Raises ``ValueError`` when ``agent_id`` is not 1-64 characters of ``[A-Za-z0-9_-]`` or
    ``kind`` is not one of ``cmd``, ``events``, ``state``.
    """
    if AGENT_ID_PATTERN.fullmatch(agent_id) is None:
        raise ValueError(f"invalid agent id {agent_id!r}: expected 1-64 of [A-Za-z0-9_-]")
    if kind not in TOPIC_KINDS:
        expected = ", ".join(sorted(TOPIC_KINDS))
        raise ValueError(f"invalid topic kind {kind!r}: expected one of {expected}")
    return f"{TOPIC_PREFIX}/{agent_id}/{kind}"


def parse_topic(name: str) -> tuple[str, TopicKind]:
    """Split a topic into (agent id, kind); ProtocolError for anything else."""
    m = _TOPIC_RE.fullmatch(name)
    if m is None:
        raise ProtocolError(f"not a Stockade agent topic: {name[:200]!r}")
    return m.group(1), m.group(2)  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Message:
    type: str
    agent_id: str
    body: Mapping[str, Any] = field(default_factory=dict)
    job_id: str | None = None
    msg_id: str = field(default_factory=lambda: secrets.token_hex(8))
    issued_at: float = 0.0
    expires_at: float | None = None
    sig: str | None = None

    def _doc(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_PREFIX + self.type,
            "msg_id": self.msg_id,
            "job_id": self.job_id,
            "agent_id": self.agent_id,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "body": dict(self.body),
        }

    def signing_bytes(self) -> bytes:
        return json.dumps(self._doc(), sort_keys=True, separators=(",", ":")).encode()

    def signed(self, key: bytes) -> Message:
        sig = hmac.new(key, self.signing_bytes(), hashlib.sha256).hexdigest()
        return Message(
            self.type,
            self.agent_id,
            self.body,
            self.job_id,
            self.msg_id,
            self.issued_at,
            self.expires_at,
            sig,
        )

    def check_signature(self, key: bytes) -> bool:
        if not self.sig:
            return False
        want = hmac.new(key, self.signing_bytes(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(want, self.sig)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now > self.expires_at


def encode_message(msg: Message) -> bytes:
    if msg.type not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {msg.type!r}")
    doc = msg._doc()
    doc["sig"] = msg.sig
    raw = json.dumps(doc, separators=(",", ":")).encode()
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"{msg.type} message is {len(raw)} bytes; limit {MAX_MESSAGE_BYTES}")
    return raw


def _field(doc: Mapping[str, Any], key: str, kinds: tuple[type, ...], *, optional: bool) -> Any:
    value = doc.get(key)
    if value is None and optional:
        return None
    # bool is an int subclass: never accept it for a number.
    if not isinstance(value, kinds) or isinstance(value, bool):
        names = "/".join(k.__name__ for k in kinds)
        raise ProtocolError(f"field {key!r} must be {names}, got {type(value).__name__}")
    return value


def decode_message(raw: bytes | bytearray) -> Message:
    """Parse and shape-check one MQTT payload. ProtocolError names what is wrong."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message is {len(raw)} bytes; limit {MAX_MESSAGE_BYTES}")
    try:
        doc = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"message is not JSON: {err}") from err
    if not isinstance(doc, dict):
        raise ProtocolError("message must be a JSON object")
    schema = _field(doc, "schema", (str,), optional=False)
    if not schema.startswith(SCHEMA_PREFIX) or schema[len(SCHEMA_PREFIX) :] not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown schema {schema[:80]!r}")
    agent_id = _field(doc, "agent_id", (str,), optional=False)
    if AGENT_ID_PATTERN.fullmatch(agent_id) is None:
        raise ProtocolError(f"invalid agent id {agent_id[:80]!r}")
    body = doc.get("body", {})
    if not isinstance(body, dict):
        raise ProtocolError("field 'body' must be an object")
    job_id = _field(doc, "job_id", (str,), optional=True)
    msg_id = _field(doc, "msg_id", (str,), optional=False)
    issued = _field(doc, "issued_at", (int, float), optional=False)
    expires = _field(doc, "expires_at", (int, float), optional=True)
    sig = _field(doc, "sig", (str,), optional=True)
    return Message(
        type=schema[len(SCHEMA_PREFIX) :],
        agent_id=agent_id,
        body=body,
        job_id=job_id,
        msg_id=msg_id,
        issued_at=float(issued),
        expires_at=None if expires is None else float(expires),
        sig=sig,
    )


def body_str(body: Mapping[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = _field(body, key, (str,), optional=optional)
    return value if value is None else str(value)


def body_int(body: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = body.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"field {key!r} must be a non-negative integer")
    return value


def body_str_list(body: Mapping[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"field {key!r} must be a list of strings")
    return list(value)


# --------------------------------------------------------------------------- binary bodies


def pack_ids(ids: Sequence[bytes]) -> bytes:
    for cid in ids:
        if len(cid) != CHUNK_ID_LEN:
            raise ProtocolError(f"a chunk id is {CHUNK_ID_LEN} bytes, got {len(cid)}")
    return b"".join(ids)


def iter_id_list(body: bytes) -> Iterator[bytes]:
    """Split a body of concatenated chunk ids; ProtocolError when it is not one."""
    if len(body) % CHUNK_ID_LEN:
        raise ProtocolError(f"id list of {len(body)} bytes is not a multiple of {CHUNK_ID_LEN}")
    if len(body) // CHUNK_ID_LEN > MAX_IDS_PER_REQUEST:
        raise ProtocolError(f"more than {MAX_IDS_PER_REQUEST} ids in one request")
    view = memoryview(body)
    for off in range(0, len(body), CHUNK_ID_LEN):
        yield bytes(view[off : off + CHUNK_ID_LEN])


_REC_HEAD: Final = struct.Struct(">32sI")


def pack_record(cid: bytes, frame: bytes | memoryview) -> bytes:
    if len(cid) != CHUNK_ID_LEN:
        raise ProtocolError(f"a chunk id is {CHUNK_ID_LEN} bytes, got {len(cid)}")
    return _REC_HEAD.pack(cid, len(frame)) + bytes(frame)


def record_header(cid: bytes, frame_len: int) -> bytes:
    return _REC_HEAD.pack(cid, frame_len)


RECORD_HEADER_LEN: Final = _REC_HEAD.size


def iter_records(body: bytes | memoryview) -> Iterator[tuple[bytes, memoryview]]:
    """Split ``id | u32 length | frame`` records; ProtocolError on truncation or excess."""
    view = memoryview(body)
    off = 0
    while off < len(view):
        if len(view) - off < _REC_HEAD.size:
            raise ProtocolError(f"truncated record header at byte {off}")
        cid, n = _REC_HEAD.unpack_from(view, off)
        off += _REC_HEAD.size
        if n > MAX_RECORD_FRAME:
            raise ProtocolError(f"record for chunk {cid.hex()} claims {n} bytes")
        if len(view) - off < n:
            raise ProtocolError(f"record for chunk {cid.hex()} is truncated")
        yield cid, view[off : off + n]
        off += n
