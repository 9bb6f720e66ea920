"""Typed ids of the server (server/ids.py)."""

from __future__ import annotations

import pytest

from agent.protocol import AGENT_ID_PATTERN, topic
from server.ids import (
    new_agent_id,
    new_data_source_id,
    new_job_id,
    parse_agent_id,
    parse_data_source_id,
    parse_job_id,
)


def test_new_ids_have_their_shapes_and_round_trip() -> None:
    for _ in range(50):
        agent_id = new_agent_id()
        assert len(agent_id) == 12
        assert agent_id == agent_id.lower()
        int(agent_id, 16)
        assert AGENT_ID_PATTERN.fullmatch(agent_id)
        assert topic(agent_id, "cmd").endswith(f"/{agent_id}/cmd")
        assert parse_agent_id(agent_id) == agent_id
        ds_id = new_data_source_id()
        assert ds_id.startswith("ds-")
        assert len(ds_id) == 13
        assert parse_data_source_id(ds_id) == ds_id
        job_id = new_job_id()
        assert job_id.startswith("job-")
        assert len(job_id) == 16
        assert parse_job_id(job_id) == job_id
    assert len({new_job_id() for _ in range(1000)}) == 1000


@pytest.mark.parametrize("text", ["", "a/b", "+", "#", "a b", "é", "x" * 65])
def test_bad_agent_ids_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not an agent id"):
        parse_agent_id(text)


@pytest.mark.parametrize("text", ["ds-", "ds-0123456789a", "DS-0123456789", "job-0123456789"])
def test_bad_data_source_ids_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a data source id"):
        parse_data_source_id(text)


@pytest.mark.parametrize("text", ["job-", "job-0123456789abc", "ds-0123456789ab"])
def test_bad_job_ids_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a job id"):
        parse_job_id(text)
