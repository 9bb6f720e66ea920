"""Set-Throttling and Start-Verify through the real CLI and server (the daemon's verify
task runs the job)."""

from __future__ import annotations

from tests.support.stack import Stack


def test_set_throttling_round_trip(stack: Stack) -> None:
    shown = stack.cli("Set-Throttling", check=True)
    assert "Enabled" in shown.out and "False" in shown.out

    too_slow = stack.cli("Set-Throttling", "-WorkHourBandwidth", "100Kbps")
    assert too_slow.code != 0 and "512 Kbps and 1023 Mbps" in too_slow.err, too_slow

    done = stack.cli(
        "Set-Throttling",
        "-WorkHourBandwidth",
        "10Mbps",
        "-NonWorkHourBandwidth",
        "100Mbps",
        "-WorkDay",
        "Mon,Tue,Wed",
        "-WorkStart",
        "08:00",
        "-WorkEnd",
        "18:00",
        "-Json",
        check=True,
    ).json()
    assert done["enabled"] is True and done["work_bps"] == 10_000_000
    assert done["non_work_bps"] == 100_000_000 and done["work_days"] == [0, 1, 2]
    assert (done["work_start"], done["work_end"]) == (8, 18)

    shown = stack.cli("Set-Throttling", check=True)
    assert "10 Mbps" in shown.out and "Monday, Tuesday, Wednesday" in shown.out
    assert "08:00-18:00" in shown.out
    off = stack.cli("Set-Throttling", "-Disable", "-Json", check=True).json()
    assert off["enabled"] is False and off["work_bps"] == 10_000_000


def test_start_verify_runs_a_job(stack: Stack) -> None:
    no_vault = stack.cli("Start-Verify", "-Tier", "Cloud")
    assert no_vault.code != 0 and "no vault is registered" in no_vault.err, no_vault

    done = stack.cli("Start-Verify", "-Wait", check=True)
    assert "DamagedChunks" in done.out and "BrokenRecoveryPoints : none" in done.out
    jobs = stack.cli("Get-Job", "-Json", check=True).json()
    assert any(j["kind"] == "verify" and j["state"] == "succeeded" for j in jobs)
