"""Control-plane definitions shared by the server and the agents (MQTT topics).

This module is a leaf: it imports only the standard library and nothing of Stockade, so the
server can import it without pulling in the agent (enforced by import-linter and
tests/unit/test_import_layers.py).

Topics carry a protocol version: ``stockade/v1/agents/{agent_id}/{kind}`` where ``kind`` is
``cmd`` (server -> agent), ``events`` (agent -> server) or ``state`` (retained, with a
last-will "offline").
"""

import re
from typing import Final, Literal, get_args

__all__ = ["AGENT_ID_PATTERN", "TOPIC_KINDS", "TOPIC_PREFIX", "TopicKind", "topic"]

TOPIC_PREFIX: Final = "stockade/v1/agents"

TopicKind = Literal["cmd", "events", "state"]
TOPIC_KINDS: Final[frozenset[str]] = frozenset(get_args(TopicKind))

# An agent id is one MQTT topic level and a broker username (ACL `%u`): no '/', '+', '#',
# whitespace or non-ASCII, so it can never widen a subscription or an ACL pattern.
AGENT_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
