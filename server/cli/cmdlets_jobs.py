"""Job cmdlets: Get-Job, Wait-Job, Stop-Job.

Get-Job prints, under its table, a line per unfinished job whose progress carries a
``status`` (a server job saying what it waits for, e.g. an online backup "retrying after
connect error (attempt 3, 41 s of 300 s budget used)").
"""

from typing import Any, Final

from server.cli.args import Kind, Param
from server.cli.client import segment
from server.cli.cmdlet import Cmdlet, Invocation
from server.cli.errors import EXIT_OK
from server.cli.jobwait import is_finished, job_table, wait_and_report
from server.cli.resolve import expect_list, expect_object, resolve_agent

__all__ = ["GET_JOB", "STOP_JOB", "WAIT_JOB", "status_lines"]

_ID_PARAM: Final = Param("Id", help="job id", required=True)


def _get_one(inv: Invocation, job_id: str) -> dict[str, object]:
    path = f"/jobs/{segment(job_id)}"
    return expect_object(inv.client.get(path), inv.client, f"GET {path}")


def status_lines(jobs: list[Any]) -> str:
    """``job ID: STATUS`` for each unfinished job with a progress status."""
    out = []
    for job in jobs:
        if not isinstance(job, dict) or is_finished(job):
            continue
        status = (job.get("progress") or {}).get("status")
        if isinstance(status, str) and status:
            out.append(f"job {job.get('id')}: {status}\n")
    return "".join(out)


def _get_job(inv: Invocation) -> int:
    job_id = inv.args.text("Id")
    if job_id is not None:
        jobs = [_get_one(inv, job_id)]
    else:
        agent_ref = inv.args.text("Agent")
        query = {
            "state": inv.args.text("State"),
            "agent": None
            if agent_ref is None
            else str(resolve_agent(inv.client, agent_ref).get("id")),
            "limit": inv.args.integer("Limit"),
        }
        jobs = expect_list(inv.client.get("/jobs", query), inv.client, "GET /jobs")
    if inv.json:
        inv.emit_json(jobs)
    else:
        inv.out.write(job_table(jobs))
        inv.out.write(status_lines(jobs))
    return EXIT_OK


GET_JOB: Final = Cmdlet(
    "Get-Job",
    "list jobs and their progress",
    params=(
        Param("Id", help="only this job"),
        Param("State", help="only jobs in this state (queued, running, succeeded, failed...)"),
        Param("Agent", help="only this agent's jobs (name or id)"),
        Param("Limit", Kind.INT, "at most this many jobs (server default)", minimum=1),
    ),
    run=_get_job,
    positional="Id",
    examples=("stockade Get-Job -State running", "stockade Get-Job -Id 42 -Json"),
)


def _wait_job(inv: Invocation) -> int:
    job_id = inv.args.text("Id")
    assert job_id is not None  # required
    return wait_and_report(inv, _get_one(inv, job_id), timeout=inv.args.number("Timeout"))


WAIT_JOB: Final = Cmdlet(
    "Wait-Job",
    "wait for a job to finish; its final state is the exit code",
    params=(
        _ID_PARAM,
        Param("Timeout", Kind.FLOAT, "give up after this many seconds (exit 1)", minimum=0),
    ),
    run=_wait_job,
    positional="Id",
    description="Exit 0 when the job succeeded (with or without warnings), 1 when it failed, "
    "was cancelled or is still running at -Timeout. Shows a progress line on a terminal.",
    examples=("stockade Wait-Job -Id 42 -Timeout 3600",),
)


def _stop_job(inv: Invocation) -> int:
    job_id = inv.args.text("Id")
    assert job_id is not None  # required
    path = f"/jobs/{segment(job_id)}/cancel"
    job = expect_object(inv.client.post(path), inv.client, f"POST {path}")
    if inv.json:
        inv.emit_json(job)
    else:
        inv.out.write(job_table([job]))
    return EXIT_OK


STOP_JOB: Final = Cmdlet(
    "Stop-Job",
    "cancel a running job",
    params=(_ID_PARAM,),
    run=_stop_job,
    positional="Id",
    description="Asks the server to cancel the job and prints its state; use Wait-Job to wait "
    "until it has stopped. Backup, restore, online backup and verify jobs can be stopped; "
    "a stopped verify job keeps no partial result.",
    examples=("stockade Stop-Job -Id 42",),
)
