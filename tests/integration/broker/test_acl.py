"""Per-agent confinement on the real broker: what each identity may read and write.

ACL denials are silent in Mosquitto (SUBACK grants, PUBACK acknowledges), so every test
asserts NON-delivery: the forbidden message is published first, an allowed control
message second, and the receiver reads until the control one arrives. Mosquitto keeps one
publisher's messages in order per subscriber, so a leaked message would have come first
(tests/support/mqtt.py).
"""

from __future__ import annotations

import aiomqtt
import pytest

from server.broker import SERVER_USER, TOPIC_ROOT
from tests.integration.broker.conftest import BrokerEnv, topic
from tests.support.mqtt import messages_until, next_message


async def test_agent_and_server_exchange_commands_and_events(broker_env: BrokerEnv) -> None:
    async with broker_env.client(SERVER_USER) as server, broker_env.client("A") as agent:
        await agent.subscribe(topic("A", "cmd"), qos=1)
        await server.subscribe(f"{TOPIC_ROOT}/+/events", qos=1)
        await server.subscribe(f"{TOPIC_ROOT}/+/state", qos=1)

        await server.publish(topic("A", "cmd"), b'{"schema":"cmd"}', qos=1)
        received = await next_message(agent)
        assert (received.topic.value, received.payload) == (topic("A", "cmd"), b'{"schema":"cmd"}')

        await agent.publish(topic("A", "events"), b"event-1", qos=1)
        await agent.publish(topic("A", "state"), b"online", qos=1, retain=True)
        got = [await next_message(server), await next_message(server)]
        assert [(m.topic.value, m.payload) for m in got] == [
            (topic("A", "events"), b"event-1"),
            (topic("A", "state"), b"online"),
        ]


FORBIDDEN_FILTERS = [
    topic("B", "cmd"),
    topic("B", "#"),
    f"{TOPIC_ROOT}/+/cmd",
    f"{TOPIC_ROOT}/#",
    "#",
    "+/+/+/+/+",
    "$SYS/#",
]
# Client ids A might borrow: wildcards (CVE-2017-7650 class) and other identities' ids.
BORROWED_CLIENT_IDS = ["#", "+", "B", SERVER_USER]


@pytest.mark.parametrize(
    ("forbidden_filter", "client_id"),
    [(f, None) for f in FORBIDDEN_FILTERS]
    + [(f, c) for f in ("#", topic("B", "cmd")) for c in BORROWED_CLIENT_IDS],
)
async def test_agent_cannot_read_another_agents_topics(
    broker_env: BrokerEnv, forbidden_filter: str, client_id: str | None
) -> None:
    """A subscribes a filter covering B's topics (with any client id, wildcards included):
    it gets neither B's retained state nor B's commands, yet its own control message."""
    async with broker_env.client(SERVER_USER) as server, broker_env.client("B") as agent_b:
        await agent_b.subscribe(topic("B", "cmd"), qos=1)
        # Retained before A subscribes: it would be sent to A right after its SUBACK.
        await server.publish(topic("B", "state"), b"B-retained", qos=1, retain=True)

        async with broker_env.client("A", client_id=client_id) as agent_a:
            await agent_a.subscribe(forbidden_filter, qos=1)
            await agent_a.subscribe(topic("A", "cmd"), qos=1)
            await server.publish(topic("B", "cmd"), b"for-B-only", qos=1)
            await server.publish(topic("A", "cmd"), b"control", qos=1)

            leaked = await messages_until(agent_a, topic("A", "cmd"))
            assert [m.topic.value for m in leaked] == []

        # B, whose client id A tried to borrow, was not displaced and got its command.
        delivered = await next_message(agent_b)
        assert (delivered.topic.value, delivered.payload) == (topic("B", "cmd"), b"for-B-only")


async def test_agent_cannot_publish_into_another_agents_topics(broker_env: BrokerEnv) -> None:
    """A forging B's events, state or commands: nobody receives them."""
    async with (
        broker_env.client(SERVER_USER) as server,
        broker_env.client("B") as agent_b,
        broker_env.client("A") as agent_a,
    ):
        await server.subscribe(f"{TOPIC_ROOT}/#", qos=1)
        await agent_b.subscribe(topic("B", "#"), qos=1)

        for leaf in ("events", "state", "cmd", "cmd/extra"):
            await agent_a.publish(topic("B", leaf), b"forged", qos=1)
        await agent_a.publish(f"{TOPIC_ROOT}/other", b"forged", qos=1)
        await agent_a.publish("elsewhere/topic", b"forged", qos=1)
        await agent_a.publish(topic("A", "events"), b"control", qos=1)

        leaked = await messages_until(server, topic("A", "events"))
        assert [m.topic.value for m in leaked] == []

        # B's subscriber: the server's control to B arrives, nothing of A's came before it.
        await server.publish(topic("B", "control"), b"control", qos=1)
        leaked_to_b = await messages_until(agent_b, topic("B", "control"))
        assert [m.topic.value for m in leaked_to_b] == []


async def test_server_is_confined_to_the_agents_tree(broker_env: BrokerEnv) -> None:
    async with broker_env.client(SERVER_USER) as server, broker_env.client("A") as agent:
        await server.subscribe("#", qos=1)
        await server.subscribe(f"{TOPIC_ROOT}/+/events", qos=1)
        await server.publish("outside/tree", b"x", qos=1)
        await agent.publish(topic("A", "events"), b"control", qos=1)
        leaked = await messages_until(server, topic("A", "events"))
        assert [m.topic.value for m in leaked] == []


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("#", "alpha-secret"),
        ("+", "alpha-secret"),
        ("A/#", "alpha-secret"),
        ("stockade/v1/agents/#", "server-secret"),
        (SERVER_USER, "alpha-secret"),  # impersonating the server with an agent's password
        (SERVER_USER, ""),
        ("A", "bravo-secret"),
        ("A", "alpha-secreT"),
        ("a", "alpha-secret"),  # usernames are case-sensitive
        ("C", "anything"),
    ],
)
async def test_unknown_users_and_wrong_passwords_are_refused(
    broker_env: BrokerEnv, user: str, password: str
) -> None:
    with pytest.raises(aiomqtt.MqttCodeError, match=r"[Nn]ot authori[sz]ed"):
        async with broker_env.client(user, password=password):
            pass


@pytest.mark.parametrize("client_id", ["#", "+", SERVER_USER, "A/#"])
async def test_wildcard_client_ids_with_a_wrong_password_are_refused(
    broker_env: BrokerEnv, client_id: str
) -> None:
    with pytest.raises(aiomqtt.MqttCodeError, match=r"[Nn]ot authori[sz]ed"):
        async with broker_env.client("A", password="wrong", client_id=client_id):
            pass
