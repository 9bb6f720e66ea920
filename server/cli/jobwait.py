"""Waiting for a job (``-Wait``, ``Wait-Job``), and how a job is shown.

A job is finished when its state is terminal or ``ended_at`` is set (the API docstring does
not list the states; ``ended_at`` is the safety net for a terminal state we do not know).
Exit code from the final state: 0 for ``succeeded`` and ``succeeded_with_warnings``, 1 for
anything else (``failed``, ``cancelled``), and 1 with a message when the wait times out
(the job keeps running). Polls ``GET /jobs/{id}`` every 0.5 s; the progress line on a
terminal is refreshed on every poll (~2x/s).
"""

import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from server.cli.client import segment
from server.cli.cmdlet import Invocation
from server.cli.errors import EXIT_FALSE, EXIT_OK, EXIT_UNREACHABLE, CliError
from server.cli.render import ProgressLine, human_bytes, key_values, local_time, table
from server.cli.resolve import expect_object

__all__ = [
    "POLL_INTERVAL",
    "SUCCEEDED_STATES",
    "TERMINAL_STATES",
    "exit_code_for",
    "is_finished",
    "job_details",
    "job_table",
    "report_started",
    "wait_and_report",
]

POLL_INTERVAL: Final = 0.5
POLL_RETRY_SECONDS: Final = 30.0  # how long -Wait rides out an unreachable server
SUCCEEDED_STATES: Final = frozenset({"succeeded", "succeeded_with_warnings"})
TERMINAL_STATES: Final = SUCCEEDED_STATES | {"failed", "cancelled"}

Obj = dict[str, Any]


def is_finished(job: Obj) -> bool:
    return job.get("state") in TERMINAL_STATES or job.get("ended_at") is not None


def exit_code_for(job: Obj) -> int:
    return EXIT_OK if job.get("state") in SUCCEEDED_STATES else EXIT_FALSE


def _count(value: Any) -> int:
    # "warnings" is a count or a list of messages; the spec does not say which.
    if isinstance(value, list):
        return len(value)
    return value if isinstance(value, int) else 0


def job_table(jobs: Sequence[Obj]) -> str:
    rows = []
    for job in jobs:
        progress = job.get("progress") or {}
        rows.append(
            [
                str(job.get("id")),
                str(job.get("kind")),
                str(job.get("state")),
                local_time(job.get("created_at")),
                local_time(job.get("ended_at")),
                f"{progress.get('files') or 0:,}",
                human_bytes(progress.get("bytes") or 0),
                str(_count(job.get("warnings"))),
                str(job.get("error") or ""),
            ]
        )
    headers = ["Id", "Kind", "State", "Created", "Ended", "Files", "Bytes", "Warnings", "Error"]
    return table(headers, rows, right=("Files", "Bytes", "Warnings"))


def job_details(job: Obj) -> str:
    progress = job.get("progress") or {}
    pairs = [
        ("Id", str(job.get("id"))),
        ("Kind", str(job.get("kind"))),
        ("State", str(job.get("state"))),
        ("Created", local_time(job.get("created_at"))),
        ("Started", local_time(job.get("started_at"))),
        ("Ended", local_time(job.get("ended_at"))),
        ("Files", f"{progress.get('files') or 0:,}"),
        ("Bytes", human_bytes(progress.get("bytes") or 0)),
    ]
    warnings = job.get("warnings")
    if _count(warnings):
        pairs.append(("Warnings", str(_count(warnings))))
    if job.get("error"):
        pairs.append(("Error", str(job["error"])))
    text = key_values(pairs)
    if isinstance(warnings, list):
        text += "".join(f"  warning: {w}\n" for w in warnings[:20])
    return text


def report_started(inv: Invocation, job: Obj) -> int:
    """Output of a Start-* cmdlet without -Wait: the queued job and how to follow it."""
    if inv.json:
        inv.emit_json(job)
    else:
        inv.out.write(job_table([job]))
        inv.note(f"follow it with: stockade Wait-Job -Id {job.get('id')}")
    return EXIT_OK


def _get_job(inv: Invocation, job_id: str) -> Obj:
    path = f"/jobs/{segment(job_id)}"
    return expect_object(inv.client.get(path), inv.client, f"GET {path}")


def _poll(
    inv: Invocation, job_id: str, clock: Callable[[], float], sleep: Callable[[float], None]
) -> Obj:
    """One poll, riding out a server that is briefly unreachable (a restart, a full
    accept queue): the job lives on in the server, so waiting must not end on a blip."""
    give_up = clock() + POLL_RETRY_SECONDS
    while True:
        try:
            return _get_job(inv, job_id)
        except CliError as err:
            if err.exit_code != EXIT_UNREACHABLE or clock() >= give_up:
                raise
            sleep(POLL_INTERVAL)


def wait_and_report(
    inv: Invocation,
    job: Obj,
    *,
    timeout: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Wait for ``job`` to finish, print its final state, return the exit code."""
    job_id = str(job.get("id"))
    deadline = None if timeout is None else clock() + timeout
    progress = ProgressLine(inv.err, enabled=inv.progress_enabled and not inv.json)
    try:
        while not is_finished(job):
            progress.update(job)
            if deadline is not None and clock() >= deadline:
                progress.clear()
                raise CliError(
                    f"job {job_id} is still {job.get('state')} after {timeout:g} s "
                    f"(it keeps running; Stop-Job -Id {job_id} cancels it)"
                )
            sleep(
                POLL_INTERVAL
                if deadline is None
                else min(POLL_INTERVAL, max(0.0, deadline - clock()))
            )
            job = _poll(inv, job_id, clock, sleep)
    except KeyboardInterrupt:
        progress.clear()
        inv.note(f"stopped waiting; job {job_id} keeps running (Stop-Job -Id {job_id} cancels it)")
        raise
    progress.clear()
    if inv.json:
        inv.emit_json(job)
    else:
        inv.out.write(job_details(job))
    return exit_code_for(job)
