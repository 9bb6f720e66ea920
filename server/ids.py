"""Typed identifiers of the server: agents, data sources and jobs.

Ids are opaque, short, lowercase and safe in MQTT topics, URLs and file names:

* `AgentId`: 12 lowercase hex digits when the server makes one; any id that
  `agent.protocol.AGENT_ID_PATTERN` accepts is valid (one MQTT topic level, a broker
  username), so ids read back from pool labels are checked against that pattern.
* `DataSourceId`: ``ds-`` and 10 hex digits.
* `JobId`: ``job-`` and 12 hex digits.

Recovery points keep the pool's own `storage_pool.RecoveryPointId`.
"""

from __future__ import annotations

import re
import secrets
from typing import Final, NewType

from agent.protocol import AGENT_ID_PATTERN

__all__ = [
    "AgentId",
    "AlertId",
    "DataSourceId",
    "GroupId",
    "JobId",
    "new_agent_id",
    "new_alert_id",
    "new_data_source_id",
    "new_group_id",
    "new_job_id",
    "parse_agent_id",
    "parse_data_source_id",
    "parse_job_id",
]

AgentId = NewType("AgentId", str)
DataSourceId = NewType("DataSourceId", str)
JobId = NewType("JobId", str)

DATA_SOURCE_ID_PATTERN: Final = re.compile(r"ds-[0-9a-f]{10}")
JOB_ID_PATTERN: Final = re.compile(r"job-[0-9a-f]{12}")


def new_agent_id() -> AgentId:
    return AgentId(secrets.token_hex(6))


def new_data_source_id() -> DataSourceId:
    return DataSourceId("ds-" + secrets.token_hex(5))


GroupId = NewType("GroupId", str)
GROUP_ID_PATTERN: Final = re.compile(r"pg-[0-9a-f]{10}")


def new_group_id() -> GroupId:
    return GroupId("pg-" + secrets.token_hex(5))


def new_job_id() -> JobId:
    return JobId("job-" + secrets.token_hex(6))


def parse_agent_id(text: str) -> AgentId:
    """Check `text` against the protocol's agent id pattern; ValueError names it."""
    if not isinstance(text, str) or AGENT_ID_PATTERN.fullmatch(text) is None:
        raise ValueError(f"not an agent id (1-64 of [A-Za-z0-9_-]): {text!r:.80}")
    return AgentId(text)


def parse_data_source_id(text: str) -> DataSourceId:
    if not isinstance(text, str) or DATA_SOURCE_ID_PATTERN.fullmatch(text) is None:
        raise ValueError(f"not a data source id (ds- and 10 hex digits): {text!r:.80}")
    return DataSourceId(text)


def parse_job_id(text: str) -> JobId:
    if not isinstance(text, str) or JOB_ID_PATTERN.fullmatch(text) is None:
        raise ValueError(f"not a job id (job- and 12 hex digits): {text!r:.80}")
    return JobId(text)


AlertId = NewType("AlertId", str)


def new_alert_id() -> AlertId:
    return AlertId("al-" + secrets.token_hex(5))
