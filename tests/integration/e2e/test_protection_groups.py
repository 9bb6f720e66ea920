"""Protection groups and security PINs through the real CLI and REST API.

One server (with its managed Mosquitto) and one agent serve the whole module; each test
makes its own data sources and groups, so the tests do not depend on one another.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import CliResult, Stack

AGENT = "alpha"
_names = itertools.count()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack.start(tmp_path_factory.mktemp("protection-groups"))
    try:
        s.add_agent(AGENT)
        yield s
    finally:
        s.close()


def new_source(stack: Stack, tmp_path: Path) -> dict[str, Any]:
    """A small files data source of the module's agent, with its own directory."""
    src = tmp_path / f"src{next(_names)}"
    src.mkdir()
    (src / "a.txt").write_text(f"content of {src.name}\n" * 50)
    return stack.add_files_source(AGENT, [src])


def ref(ds: dict[str, Any]) -> str:
    return f"{ds['agent_name']}:{ds['name']}"


def groups(stack: Stack) -> list[dict[str, Any]]:
    doc: list[dict[str, Any]] = stack.cli("Get-ProtectionGroup", "-Json", check=True).json()
    return doc


def group(stack: Stack, name: str) -> dict[str, Any]:
    (doc,) = stack.cli("Get-ProtectionGroup", "-Name", name, "-Json", check=True).json()
    assert isinstance(doc, dict)
    return doc


def rps(stack: Stack, ds_id: str) -> list[dict[str, Any]]:
    # By REST: it finds removed data sources too (the CLI resolves live ones only).
    status, doc = stack.server.api("GET", f"/api/v1/recovery-points?data_source={ds_id}")
    assert status == 200, doc
    assert isinstance(doc, list)
    return doc


def new_pin(stack: Stack) -> str:
    doc = stack.cli("New-SecurityPin", "-Json", check=True).json()
    pin: str = doc["pin"]
    return pin


def refused(result: CliResult, code: int, *fragments: str) -> None:
    assert result.code == code, (result.code, result.out, result.err)
    assert result.out == ""
    assert result.err.count("\n") == 1, result.err  # one line
    for fragment in fragments:
        assert fragment in result.err, (fragment, result.err)


# -- create, get, set, remove --------------------------------------------------------------


def test_create_get_set_remove(stack: Stack, tmp_path: Path) -> None:
    ds1, ds2 = new_source(stack, tmp_path), new_source(stack, tmp_path)
    created = stack.cli(
        "New-ProtectionGroup",
        "-Name",
        "files",
        "-DataSource",
        ref(ds1),
        "-SyncFrequency",
        "30",
        "-RecoveryPointTime",
        "20:00,8:00",
        "-RetentionDays",
        "14",
        "-Online",
        "-OnlineTime",
        "21:00,23:30",
        "-OnlineDaily",
        "30",
        "-OnlineYearly",
        "2",
        "-Json",
        check=True,
    ).json()
    assert created["id"].startswith("pg-")
    assert created["disk"] == {
        "sync_frequency_minutes": 30,
        "recovery_point_times": ["08:00", "20:00"],
        "retention_days": 14,
    }
    assert created["online"] == {
        "enabled": True,
        "times": ["21:00", "23:30"],
        "daily": 30,
        "weekly": 104,
        "monthly": 60,
        "yearly": 2,
    }
    assert [(m["id"], m["ref"], m["last_rp_at"]) for m in created["members"]] == [
        (ds1["id"], ref(ds1), None)
    ]
    assert group(stack, "files") == created
    assert group(stack, created["id"]) == created  # by id too

    table = stack.cli("Get-ProtectionGroup", "files", check=True).out
    assert "files" in table and ref(ds1) in table and "30 min" in table and "08:00,20:00" in table

    changed = stack.cli(
        "Set-ProtectionGroup",
        "-Name",
        "files",
        "-NewName",
        "files2",
        "-AddDataSource",
        ds2["id"],
        "-RemoveDataSource",
        ref(ds1),
        "-SyncFrequency",
        "rp-times",
        "-NoOnline",
        "-Json",
        check=True,
    ).json()
    assert changed["name"] == "files2"
    assert [m["id"] for m in changed["members"]] == [ds2["id"]]
    assert changed["disk"]["sync_frequency_minutes"] is None
    assert changed["disk"]["recovery_point_times"] == ["08:00", "20:00"]  # kept
    assert changed["disk"]["retention_days"] == 14  # kept
    assert changed["online"]["enabled"] is False
    assert changed["online"]["daily"] == 30  # kept
    assert changed["created_at"] == created["created_at"]
    assert "rp-times" in stack.cli("Get-ProtectionGroup", "files2", check=True).out

    # ds1 is free again: another group may take it.
    other = stack.cli(
        "New-ProtectionGroup", "-Name", "other", "-DataSource", ds1["id"], "-Json", check=True
    ).json()
    assert other["disk"] == {
        "sync_frequency_minutes": 60,
        "recovery_point_times": [],
        "retention_days": 5,
    }

    removed = stack.cli("Remove-ProtectionGroup", "-Name", "files2", check=True)
    assert "Removed protection group files2" in removed.out
    refused(stack.cli("Get-ProtectionGroup", "-Name", "files2"), 2, "no protection group")
    stack.cli("Remove-ProtectionGroup", "other", check=True)
    assert all(g["name"] not in ("files2", "other") for g in groups(stack))
    status, doc = stack.server.api("GET", "/api/v1/protection-groups?include_removed=true")
    assert status == 200
    assert {g["name"] for g in doc if g["removed_at"] is not None} >= {"files2", "other"}


# -- invalid input ------------------------------------------------------------------------------

INVALID_POLICIES = [
    (["-SyncFrequency", "17"], "sync frequency 17 is not allowed: use 15, 30, 45, 60, 120"),
    (["-SyncFrequency", "hourly"], "or 1440 minutes, or 'rp-times'"),
    (["-RetentionDays", "0"], "disk retention 0 days is not allowed: use 1 to 448 days"),
    (["-RetentionDays", "449"], "disk retention 449 days is not allowed: use 1 to 448 days"),
    (["-RecoveryPointTime", "25:00"], "use HH:MM from 00:00 to 23:59"),
    (["-OnlineTime", "01:00,02:00,03:00,04:00"], "4 given, at most 3"),
    (["-OnlineDaily", "6"], "online daily retention 6 is below the floor: keep at least 7 days"),
    (["-OnlineWeekly", "3"], "keep at least 4 weeks"),
    (["-OnlineMonthly", "2"], "keep at least 3 months"),
    (["-OnlineYearly", "0"], "online yearly retention 0 is below the floor"),
]


@pytest.mark.parametrize(("args", "message"), INVALID_POLICIES)
def test_invalid_policy_values_are_refused_and_change_nothing(
    stack: Stack, tmp_path: Path, args: list[str], message: str
) -> None:
    ds = new_source(stack, tmp_path)
    name = f"valid{next(_names)}"
    stack.cli("New-ProtectionGroup", "-Name", name, "-DataSource", ds["id"], check=True)
    before = groups(stack)
    refused(stack.cli("Set-ProtectionGroup", "-Name", name, *args), 2, message)
    refused(stack.cli("New-ProtectionGroup", "-Name", f"{name}-new", *args), 2, message)
    assert groups(stack) == before


def test_invalid_membership_and_names_are_refused_and_change_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    ds, free = new_source(stack, tmp_path), new_source(stack, tmp_path)
    stack.cli("New-ProtectionGroup", "-Name", "members", "-DataSource", ds["id"], check=True)
    before = groups(stack)
    # A data source belongs to at most one group (a conflict: exit 1).
    refused(
        stack.cli(
            "New-ProtectionGroup", "-Name", "second", "-DataSource", f"{free['id']},{ds['id']}"
        ),
        1,
        f"data source {ref(ds)} already belongs to protection group 'members'",
    )
    refused(
        stack.cli("New-ProtectionGroup", "-Name", "members"),
        1,
        "a protection group named 'members' exists",
    )
    # Unknown data sources: the CLI resolves them, the API refuses them too.
    refused(
        stack.cli("New-ProtectionGroup", "-Name", "third", "-DataSource", f"{AGENT}:nope"),
        2,
        f"no data source matches '{AGENT}:nope'",
    )
    refused(
        stack.cli("Set-ProtectionGroup", "-Name", "members", "-AddDataSource", "ds-0000000000"),
        2,
        "no data source matches",
    )
    refused(
        stack.cli("Set-ProtectionGroup", "-Name", "members", "-RemoveDataSource", free["id"]),
        1,
        f"data source {free['id']} is not a member of members",
    )
    refused(
        stack.cli("New-ProtectionGroup", "-Name", "rp", "-SyncFrequency", "rp-times"),
        2,
        "needs at least one recovery-point time",
    )
    refused(stack.cli("Set-ProtectionGroup", "-Name", "nope", "-RetentionDays", "9"), 2, "nope")
    refused(stack.cli("Set-ProtectionGroup", "-Name", "members"), 2, "nothing to change")
    refused(stack.cli("New-ProtectionGroup", "-Name", "x", "-Online", "-NoOnline"), 2, "not both")
    assert groups(stack) == before

    srv = stack.server
    for method, path, body, status, message in [
        (
            "POST",
            "/api/v1/protection-groups",
            {"name": "api", "members": [f"{AGENT}:nope"]},
            400,
            f"unknown data source '{AGENT}:nope'",
        ),
        ("POST", "/api/v1/protection-groups", {"members": []}, 400, "field 'name'"),
        ("POST", "/api/v1/protection-groups", {"name": "api", "color": 1}, 400, "unknown field"),
        (
            "POST",
            "/api/v1/protection-groups",
            {"name": "api", "disk": {"retention_days": 449}},
            400,
            "use 1 to 448 days",
        ),
        (
            "PATCH",
            "/api/v1/protection-groups/members",
            {"online": {"times": ["1:00", "2:00", "3:00", "4:00"]}},
            400,
            "at most 3",
        ),
        (
            "PATCH",
            "/api/v1/protection-groups/members",
            {"disk": {"sync_frequency_minutes": 90}},
            400,
            "sync frequency 90 is not allowed",
        ),
        (
            "PATCH",
            "/api/v1/protection-groups/members",
            {"add": [free["id"], free["id"]]},
            409,
            "listed twice",
        ),
        ("DELETE", "/api/v1/protection-groups/nope", None, 404, "'nope' not found"),
    ]:
        got, doc = srv.api(method, path, body)
        assert (got, message in doc.get("error", "")) == (status, True), (method, path, doc)
    assert groups(stack) == before


# -- security PIN -----------------------------------------------------------------------------


def test_new_security_pin(stack: Stack) -> None:
    start = time.time()
    doc = stack.cli("New-SecurityPin", "-Json", check=True).json()
    assert len(doc["pin"]) == 8 and doc["pin"].isdigit()
    assert start + 290 < doc["expires_at"] < time.time() + 310
    out = stack.cli("New-SecurityPin", check=True).out
    assert out.startswith("Pin") and "Expires" in out


def test_delete_data_needs_a_valid_pin(stack: Stack, tmp_path: Path) -> None:
    ds1, ds2, other = (new_source(stack, tmp_path) for _ in range(3))
    stack.cli(
        "New-ProtectionGroup",
        "-Name",
        "doomed",
        "-DataSource",
        f"{ds1['id']},{ds2['id']}",
        check=True,
    )
    for ds in (ds1, ds2, other):
        assert stack.backup(ds["id"])["state"] == "succeeded"
    before = groups(stack)

    refused(
        stack.cli("Remove-ProtectionGroup", "-Name", "doomed", "-DeleteData"),
        2,
        "security PIN is missing: run New-SecurityPin",
        "deleting the data of protection group doomed",
    )
    refused(
        stack.cli("Remove-ProtectionGroup", "doomed", "-DeleteData", "-SecurityPin", "0000000"),
        2,
        "security PIN is wrong or was already used",
    )
    status, doc = stack.server.api("DELETE", "/api/v1/protection-groups/doomed?delete_data=true")
    assert (status, doc["error"].split(" (")[0]) == (
        403,
        "security PIN is missing: run New-SecurityPin",
    )
    assert groups(stack) == before
    assert all(len(rps(stack, ds["id"])) == 1 for ds in (ds1, ds2, other))

    pin = new_pin(stack)
    done = stack.cli(
        "Remove-ProtectionGroup", "doomed", "-DeleteData", "-SecurityPin", pin, "-Json", check=True
    ).json()
    assert done["recovery_points_deleted"] == 2
    assert rps(stack, ds1["id"]) == rps(stack, ds2["id"]) == []
    assert (
        stack.cli("Get-RecoveryPoint", "-DataSource", ds1["id"], "-Json", check=True).json() == []
    )
    assert len(rps(stack, other["id"])) == 1
    assert "doomed" not in {g["name"] for g in groups(stack)}

    # A used PIN does not work again; data source and agent deletion need one too.
    refused(
        stack.cli("Remove-DataSource", other["id"], "-DeleteData", "-SecurityPin", pin),
        2,
        "security PIN is wrong or was already used",
        f"deleting the recovery points of data source {ref(other)}",
    )
    refused(stack.cli("Remove-DataSource", other["id"], "-DeleteData"), 2, "PIN is missing")
    refused(stack.cli("Remove-Agent", AGENT, "-DeleteData"), 2, "PIN is missing")
    assert len(rps(stack, other["id"])) == 1
    stack.wait_agent_online(AGENT)  # the agent was not removed

    stack.cli(
        "Remove-DataSource", other["id"], "-DeleteData", "-SecurityPin", new_pin(stack), check=True
    )
    assert rps(stack, other["id"]) == []


def test_removing_a_group_keeps_the_data_by_default(stack: Stack, tmp_path: Path) -> None:
    ds = new_source(stack, tmp_path)
    stack.cli("New-ProtectionGroup", "-Name", "kept", "-DataSource", ds["id"], check=True)
    assert stack.backup(ds["id"])["state"] == "succeeded"
    pin = new_pin(stack)
    # A PIN given without -DeleteData is not needed, and not used up.
    stack.cli("Remove-ProtectionGroup", "kept", "-SecurityPin", pin, check=True)
    assert len(rps(stack, ds["id"])) == 1
    stack.cli("Remove-DataSource", ds["id"], "-DeleteData", "-SecurityPin", pin, check=True)
    assert rps(stack, ds["id"]) == []


# -- backups of a whole group -------------------------------------------------------------------


def test_start_backup_of_a_group_waits_for_every_member(stack: Stack, tmp_path: Path) -> None:
    members = [new_source(stack, tmp_path) for _ in range(3)]
    stack.cli(
        "New-ProtectionGroup",
        "-Name",
        "nightly",
        "-DataSource",
        ",".join(ref(m) for m in members),
        check=True,
    )
    result = stack.cli("Start-Backup", "-ProtectionGroup", "nightly", "-Wait", "-Json")
    assert result.code == 0, (result.out, result.err, stack.server.tail())
    doc = result.json()
    assert doc["protection_group"]["name"] == "nightly"
    assert doc["skipped"] == []
    assert sorted(j["data_source_id"] for j in doc["jobs"]) == sorted(m["id"] for m in members)
    assert {j["state"] for j in doc["jobs"]} == {"succeeded"}
    for m in members:
        assert len(rps(stack, m["id"])) == 1
    shown = group(stack, "nightly")
    assert all(m["rp_count"] == 1 and m["last_rp_at"] for m in shown["members"])

    table = stack.cli("Start-Backup", "-ProtectionGroup", "nightly", "-Wait", check=True).out
    assert table.count("succeeded") == 3
    refused(stack.cli("Start-Backup", "-ProtectionGroup", "nope"), 2, "'nope' not found")
    refused(
        stack.cli("Start-Backup", "-ProtectionGroup", "nightly", "-DataSource", ref(members[0])),
        2,
        "-DataSource or -ProtectionGroup",
    )
    stack.cli("New-ProtectionGroup", "-Name", "empty", check=True)
    refused(stack.cli("Start-Backup", "-ProtectionGroup", "empty"), 1, "has no data sources")
