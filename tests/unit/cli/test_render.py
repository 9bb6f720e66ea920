"""Human formatting (server/cli/render.py) and the job exit-code rule (jobwait.py)."""

import io

import pytest

from server.cli.jobwait import exit_code_for, is_finished
from server.cli.render import ProgressLine, format_progress, human_bytes, local_time, table


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "-"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 * 1024**3, "5.0 GiB"),
        (1024**7, "1024.0 EiB"),
    ],
)
def test_human_bytes(value: int | None, text: str) -> None:
    assert human_bytes(value) == text


def test_local_time_shape() -> None:
    assert local_time(None) == "-"
    text = local_time(1_767_268_800.0)
    assert len(text) == 19 and text[4] == "-" and text[10] == " " and text[13] == ":"


def test_table_aligns_columns() -> None:
    text = table(["Name", "Size"], [["a", "1 B"], ["longer", "10.0 KiB"]], right=("Size",))
    assert text.splitlines() == [
        "Name        Size",
        "------  --------",
        "a            1 B",
        "longer  10.0 KiB",
    ]


def test_progress_line_fits_and_keeps_the_path_tail() -> None:
    job = {
        "id": "7",
        "state": "running",
        "progress": {
            "files": 1234,
            "bytes": 5 * 1024**2,
            "rate_bps": 2 * 1024**2,
            "current_path": "/srv/" + "deep/" * 30 + "file.txt",
        },
    }
    line = format_progress(job, 100)
    assert len(line) <= 100
    assert "1,234 files, 5.0 MiB, 2.0 MiB/s" in line
    assert line.endswith("file.txt") and "..." in line
    assert len(format_progress(job, 20)) == 20


def test_progress_line_is_silent_when_disabled() -> None:
    stream = io.StringIO()
    progress = ProgressLine(stream, enabled=False)
    progress.update({"id": "1", "state": "running"})
    progress.clear()
    assert stream.getvalue() == ""
    enabled = ProgressLine(stream, enabled=True)
    enabled.update({"id": "1", "state": "running"})
    enabled.clear()
    assert stream.getvalue().startswith("\r\x1b[K")
    assert stream.getvalue().endswith("\r\x1b[K")


@pytest.mark.parametrize(
    ("job", "finished", "code"),
    [
        ({"state": "succeeded", "ended_at": 1.0}, True, 0),
        ({"state": "succeeded_with_warnings", "ended_at": 1.0}, True, 0),
        ({"state": "failed", "ended_at": 1.0}, True, 1),
        ({"state": "cancelled", "ended_at": 1.0}, True, 1),
        ({"state": "running", "ended_at": None}, False, 1),
        ({"state": "some_new_terminal_state", "ended_at": 1.0}, True, 1),
    ],
)
def test_job_final_state(job: dict[str, object], finished: bool, code: int) -> None:
    assert is_finished(job) is finished
    assert exit_code_for(job) == code
