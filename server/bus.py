"""The server's side of the MQTT control plane (aiomqtt).

The server connects as ``stockade-server`` with a persistent session (fixed client id,
clean_session False), so events agents publish while it is down wait in the broker.
It subscribes to every agent's ``events`` and retained ``state`` and publishes signed
commands on ``cmd`` with QoS 1. A message's sender is its topic: the broker's ACL lets an
agent publish only under its own id, so a message whose ``agent_id`` differs from its
topic is dropped, as is anything malformed (logged, never fatal).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiomqtt
import structlog

from agent import protocol as p

log = structlog.get_logger()

StateHandler = Callable[[str, p.Message], Awaitable[None]]
EventHandler = Callable[[str, p.Message], Awaitable[None]]

BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0


@dataclass(slots=True)
class Bus:
    host: str
    port: int
    username: str
    password: str
    tls_context: ssl.SSLContext | None
    on_state: StateHandler
    on_event: EventHandler
    client_id: str = p.SERVER_USERNAME
    _client: aiomqtt.Client | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def publish(self, agent_id: str, msg: p.Message) -> None:
        client = self._client
        if client is None:
            log.warning("command_not_sent_broker_down", agent_id=agent_id, job_id=msg.job_id)
            return
        try:
            await client.publish(p.topic(agent_id, "cmd"), p.encode_message(msg), qos=1)
        except aiomqtt.MqttError as err:
            log.warning("command_not_sent", agent_id=agent_id, job_id=msg.job_id, error=str(err))

    async def run(self) -> None:
        """Connect, subscribe and dispatch until cancelled; reconnect with backoff."""
        delay = BACKOFF_MIN
        while True:
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    username=self.username,
                    password=self.password,
                    identifier=self.client_id,
                    clean_session=False,
                    tls_context=self.tls_context,
                    keepalive=30,
                    max_queued_incoming_messages=100_000,
                ) as client:
                    await client.subscribe(f"{p.TOPIC_PREFIX}/+/state", qos=1)
                    await client.subscribe(f"{p.TOPIC_PREFIX}/+/events", qos=1)
                    self._client = client
                    self.connected.set()
                    delay = BACKOFF_MIN
                    log.info("bus_connected", host=self.host, port=self.port)
                    async for message in client.messages:
                        await self._handle(str(message.topic), message.payload)
            except aiomqtt.MqttError as err:
                log.warning("bus_disconnected", error=str(err), retry_in=delay)
            finally:
                self._client = None
                self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _handle(self, topic: str, payload: object) -> None:
        try:
            agent_id, kind = p.parse_topic(topic)
        except p.ProtocolError as err:
            log.warning("bad_mqtt_topic", error=str(err))
            return
        if not isinstance(payload, bytes | bytearray) or not payload:
            return  # a cleared retained message
        try:
            msg = p.decode_message(payload)
        except p.ProtocolError as err:
            log.warning("bad_mqtt_message", agent_id=agent_id, topic=topic, error=str(err))
            return
        if msg.agent_id != agent_id:
            log.warning("mqtt_sender_mismatch", topic_agent=agent_id, claimed=msg.agent_id)
            return
        try:
            if kind == "state" and msg.type == p.STATE:
                await self.on_state(agent_id, msg)
            elif kind == "events" and msg.type.startswith("event."):
                await self.on_event(agent_id, msg)
            else:
                log.warning("unexpected_mqtt_message", agent_id=agent_id, type=msg.type)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("mqtt_handler_failed", agent_id=agent_id, type=msg.type)
