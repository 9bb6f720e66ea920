"""The running agent: its data plane client, MQTT link, job manager and runner, wired.

:class:`AgentService` is what ``stockade-agent run`` serves (agent.daemon adds signals and
sd_notify) and what tests start in-process. Order:

* :meth:`AgentService.start`: the MQTT link starts connecting in the background; jobs a
  previous process left running are reported failed (queued until the broker is there).
* :meth:`AgentService.stop`: no new commands; every running job is cancelled and its
  result published; the retained ``offline`` state is published; the link disconnects;
  the HTTP client closes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent import __version__
from agent.config import AgentIdentity
from agent.http_client import DataPlaneClient, RetryPolicy
from agent.job_ledger import JobLedger
from agent.job_runner import AgentJobRunner
from agent.jobs import SHUTDOWN_GRACE, JobManager
from agent.mqtt_link import MqttLink

__all__ = ["AgentService"]


class AgentService:
    def __init__(
        self,
        identity: AgentIdentity,
        state_dir: Path,
        *,
        workers: int = 2,
        retry: RetryPolicy | None = None,
        heartbeat_interval: float = 30.0,
        ledger: JobLedger | None = None,
    ) -> None:
        self.identity = identity
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.client = DataPlaneClient(identity, retry=retry)
        self.runner = AgentJobRunner(self.client, state_dir, workers=workers)
        self.ledger = ledger if ledger is not None else JobLedger.load(state_dir)
        self.link = MqttLink(
            agent_id=identity.agent_id,
            credential=identity.broker_password,
            mqtt_url=identity.mqtt_url,
            ca_pem=identity.ca_pem,
            version=__version__,
            on_command=self._on_command,
            running_jobs=self._running_jobs,
            heartbeat_interval=heartbeat_interval,
        )
        self.jobs = JobManager(
            agent_id=identity.agent_id,
            command_key=identity.command_key_bytes,
            ledger=self.ledger,
            events=self.link,
            runner=self.runner,
            on_jobs_changed=self.link.publish_state,
        )
        self._link_task: asyncio.Task[None] | None = None

    async def _on_command(self, topic: str, payload: bytes) -> None:
        await self.jobs.handle(topic, payload)

    def _running_jobs(self) -> list[str]:
        return self.jobs.running_jobs()

    async def start(self) -> None:
        self._link_task = asyncio.create_task(self.link.run(), name="mqtt-link")
        await self.jobs.report_interrupted()

    async def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        await self.jobs.shutdown(grace)
        await self.link.close(self._link_task)
        self._link_task = None
        await self.client.close()
