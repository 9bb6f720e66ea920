"""The agent's MQTT connection: presence, commands in, events out.

Connection: aiomqtt, MQTT 3.1.1, client id and username = agent id, password = the
credential, TLS trusting only the pinned CA (``mqtts://``; ``mqtt://`` is plain TCP, for
tests). ``clean_session=False``: the broker keeps the subscription and queues QoS 1
commands while the agent is offline and hands them over on reconnect.

Presence: the last will is the retained ``state`` message ``{"state": "offline"}``, so a
killed agent (or a lost link) shows offline. On every connect the agent publishes the
retained ``{"state": "online", "version", "running_jobs"}`` and republishes it whenever its
running jobs change (:meth:`MqttLink.publish_state`). A clean shutdown suppresses the will,
so :meth:`MqttLink.close` publishes the offline state itself before disconnecting.
Every ``heartbeat_interval`` seconds an ``event.heartbeat`` goes to the events topic.

Order on connect: subscribe to ``cmd`` (QoS 1), publish state online, flush the outbox,
then read commands. Commands are handed to ``on_command(topic, payload)`` one at a time in
arrival order; it must return quickly (the job manager starts jobs as tasks).

Delivery of events: ``publish_event(..., keep=True)`` (accepted, result) waits in a
bounded in-memory outbox while the broker is away and is sent after the next connect;
``keep=False`` (progress, heartbeat) is dropped when offline. The broker acknowledges a
QoS 1 command when it arrives, before the job ledger records it: a crash in between loses
that command (the server times the job out); it never runs one twice.

Reconnect: exponential backoff from ``backoff_first`` (0.5 s) doubling to ``backoff_cap``
(30 s), reset after each successful connect.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import aiomqtt
import structlog

from agent import protocol
from agent.http_client import ssl_context_for

__all__ = ["MqttLink", "parse_mqtt_url"]

log = structlog.get_logger()

OUTBOX_LIMIT: Final = 1000
CommandHandler = Callable[[str, bytes], Awaitable[None]]


def parse_mqtt_url(url: str) -> tuple[str, int, bool]:
    """``mqtts://host[:port]`` -> (host, port, tls); ValueError names a bad URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise ValueError(f"bad broker URL {url!r}: {err}") from err
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"bad broker URL {url!r}: expected mqtts://host:port")
    tls = parts.scheme == "mqtts"
    return parts.hostname, port or (8883 if tls else 1883), tls


class MqttLink:
    """One agent's broker connection, kept up by :meth:`run` until :meth:`close`."""

    def __init__(
        self,
        *,
        agent_id: str,
        credential: str,
        mqtt_url: str,
        ca_pem: str | bytes,
        version: str,
        on_command: CommandHandler,
        running_jobs: Callable[[], list[str]],
        heartbeat_interval: float = 30.0,
        backoff_first: float = 0.5,
        backoff_cap: float = 30.0,
        timeout: float = 10.0,
    ) -> None:
        self.agent_id = agent_id
        self._credential = credential
        self._host, self._port, tls = parse_mqtt_url(mqtt_url)
        self._tls = ssl_context_for(ca_pem) if tls else None
        self._version = version
        self._on_command = on_command
        self._running_jobs = running_jobs
        self._heartbeat_interval = heartbeat_interval
        self._backoff_first = backoff_first
        self._backoff_cap = backoff_cap
        self._timeout = timeout
        self._cmd_topic = protocol.topic(agent_id, "cmd")
        self._state_topic = protocol.topic(agent_id, "state")
        self._events_topic = protocol.topic(agent_id, "events")
        self._client: aiomqtt.Client | None = None
        self._outbox: collections.deque[bytes] = collections.deque(maxlen=OUTBOX_LIMIT)
        self._closing = False
        self.connected = asyncio.Event()
        self.connected_once = asyncio.Event()

    # ------------------------------------------------------------------ messages

    def _message(self, kind: str, body: Mapping[str, Any], job_id: str | None = None) -> bytes:
        msg = protocol.Message(kind, self.agent_id, body, job_id=job_id, issued_at=time.time())
        return protocol.encode_message(msg)

    def _online_state(self) -> bytes:
        return self._message(
            protocol.STATE,
            {"state": "online", "version": self._version, "running_jobs": self._running_jobs()},
        )

    def offline_state(self) -> bytes:
        return self._message(protocol.STATE, {"state": "offline"})

    # ------------------------------------------------------------------ connection

    def _new_client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(self._state_topic, self.offline_state(), qos=1, retain=True)
        return aiomqtt.Client(
            self._host,
            self._port,
            username=self.agent_id,
            password=self._credential,
            identifier=self.agent_id,
            clean_session=False,
            protocol=aiomqtt.ProtocolVersion.V311,
            will=will,
            tls_context=self._tls,
            timeout=self._timeout,
            keepalive=30,
            max_queued_outgoing_messages=OUTBOX_LIMIT,
        )

    async def run(self) -> None:
        """Connect, serve and reconnect until cancelled (or :meth:`close`)."""
        delay = self._backoff_first
        while not self._closing:
            client = self._new_client()
            try:
                async with client:
                    delay = self._backoff_first
                    await self._serve(client)
            except aiomqtt.MqttError as err:
                if self._closing:
                    break
                log.warning(
                    "mqtt_disconnected",
                    broker=f"{self._host}:{self._port}",
                    error=str(err),
                    retry_in_s=delay,
                )
            finally:
                self._client = None
                self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_cap)

    async def _serve(self, client: aiomqtt.Client) -> None:
        await client.subscribe(self._cmd_topic, qos=1)
        await client.publish(self._state_topic, self._online_state(), qos=1, retain=True)
        self._client = client
        self.connected.set()
        self.connected_once.set()
        log.info("mqtt_connected", broker=f"{self._host}:{self._port}", agent_id=self.agent_id)
        await self._flush_outbox(client)
        beat = asyncio.create_task(self._heartbeat(client), name="mqtt-heartbeat")
        try:
            async for message in client.messages:
                payload = message.payload
                if not isinstance(payload, bytes | bytearray):
                    continue  # paho hands bytes; anything else is not ours
                try:
                    await self._on_command(str(message.topic), bytes(payload))
                except Exception as err:  # one bad command must not take the link down
                    log.exception(
                        "command_handler_failed", topic=str(message.topic), error=str(err)
                    )
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _flush_outbox(self, client: aiomqtt.Client) -> None:
        while self._outbox:
            payload = self._outbox[0]
            await client.publish(self._events_topic, payload, qos=1)
            self._outbox.popleft()

    async def _heartbeat(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            body = {"version": self._version, "running_jobs": self._running_jobs()}
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(
                    self._events_topic, self._message(protocol.EVENT_HEARTBEAT, body), qos=1
                )

    # ------------------------------------------------------------------ publishing

    async def publish_event(
        self,
        kind: str,
        body: Mapping[str, Any],
        *,
        job_id: str | None,
        keep: bool,
    ) -> None:
        """Publish an event; ``keep``: hold it in the outbox while offline, else drop it."""
        payload = self._message(kind, body, job_id)
        client = self._client
        if client is not None:
            try:
                await client.publish(self._events_topic, payload, qos=1)
                return
            except aiomqtt.MqttError as err:
                log.info("mqtt_publish_deferred", kind=kind, job_id=job_id, error=str(err))
        if keep:
            self._outbox.append(payload)

    async def publish_state(self) -> None:
        """Republish the retained online state (e.g. the running jobs changed)."""
        client = self._client
        if client is None:
            return  # the next connect publishes the current state
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(self._state_topic, self._online_state(), qos=1, retain=True)

    async def close(self, run_task: asyncio.Task[None] | None = None) -> None:
        """Publish the retained offline state, then stop ``run_task`` (which disconnects)."""
        self._closing = True
        client = self._client
        if client is not None:
            try:
                await client.publish(self._state_topic, self.offline_state(), qos=1, retain=True)
            except aiomqtt.MqttError as err:
                log.warning("mqtt_offline_state_not_sent", error=str(err))
        if run_task is not None:
            run_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run_task
