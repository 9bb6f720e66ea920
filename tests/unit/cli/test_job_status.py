"""Get-Job's status lines under the table: what a running server job waits for (an online
backup retrying through a cloud outage), never for finished jobs."""

from server.cli.cmdlets_jobs import status_lines

RETRYING = "retrying after connect error (attempt 3, 41 s of 300 s budget used)"


def test_running_jobs_with_a_status_get_a_line() -> None:
    jobs = [
        {"id": "job-1", "state": "running", "progress": {"status": RETRYING, "retries": 2}},
        {"id": "job-2", "state": "running", "progress": {"bytes_uploaded": 5}},
        {"id": "job-3", "state": "failed", "ended_at": 1.0, "progress": {"status": RETRYING}},
        {"id": "job-4", "state": "queued", "progress": None},
    ]
    assert status_lines(jobs) == f"job job-1: {RETRYING}\n"
    assert status_lines([]) == ""
