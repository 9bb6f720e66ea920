"""``Start-Backup -ProtectionGroup``: one job per member, and ``-Wait`` for all of them.

Members whose backup is already queued or running are reported on stderr and left alone
(the server does not start a second one). Without ``-Wait`` the started jobs are shown.
With ``-Wait`` every started job is polled until it ends; the exit code is 1 if any
failed or was cancelled, or if no job could be started at all.
"""

import time
from collections.abc import Callable
from typing import Any, Final

from server.cli.client import segment
from server.cli.cmdlet import Invocation
from server.cli.errors import EXIT_FALSE, EXIT_OK, CliError
from server.cli.jobwait import POLL_INTERVAL, SUCCEEDED_STATES, is_finished, job_table
from server.cli.resolve import expect_list, expect_object

__all__ = ["start_group_backup"]

Obj = dict[str, Any]
_WHAT: Final = "POST /jobs/backup"


def _wait_all(
    inv: Invocation, jobs: list[Obj], sleep: Callable[[float], None] = time.sleep
) -> list[Obj]:
    current = {str(j.get("id")): j for j in jobs}
    while True:
        pending = [job_id for job_id, job in current.items() if not is_finished(job)]
        if not pending:
            return [current[str(j.get("id"))] for j in jobs]
        sleep(POLL_INTERVAL)
        for job_id in pending:
            path = f"/jobs/{segment(job_id)}"
            current[job_id] = expect_object(inv.client.get(path), inv.client, f"GET {path}")


def start_group_backup(inv: Invocation, group_ref: str, *, online: bool = False) -> int:
    body: Obj = {"protection_group": group_ref}
    if online:
        body["online"] = True
    answer = expect_object(inv.client.post("/jobs/backup", body), inv.client, _WHAT)
    jobs = expect_list(answer.get("jobs"), inv.client, _WHAT)
    skipped = expect_list(answer.get("skipped") or [], inv.client, _WHAT)
    for item in skipped:
        inv.note(f"not started: {item.get('reason')}")
    if not jobs:
        raise CliError(f"no backup started for protection group {group_ref}")
    wait = inv.args.switch("Wait")
    if wait:
        try:
            jobs = _wait_all(inv, jobs)
        except KeyboardInterrupt:
            inv.note("stopped waiting; the jobs keep running (Get-Job lists them)")
            raise
    if inv.json:
        inv.emit_json({**answer, "jobs": jobs})
    else:
        inv.out.write(job_table(jobs))
        if not wait:
            inv.note("follow them with: stockade Get-Job")
    if wait and any(j.get("state") not in SUCCEEDED_STATES for j in jobs):
        return EXIT_FALSE
    return EXIT_OK
