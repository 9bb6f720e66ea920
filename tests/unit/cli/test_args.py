"""PowerShell-style parameter parsing (server/cli/args.py): pure, no server."""

import pytest

from server.cli.args import Kind, Param, normalise, parse, split_list
from server.cli.errors import UsageError

PARAMS = (
    Param("DataSource", required=True),
    Param("Path", Kind.LIST),
    Param("Wait", Kind.SWITCH),
    Param("Limit", Kind.INT, minimum=1),
    Param("Timeout", Kind.FLOAT, minimum=0),
    Param("Tier", choices=("Disk", "Cloud")),
)


def run(*argv: str, positional: str | None = "DataSource") -> dict[str, object]:
    return dict(parse("Test-Thing", PARAMS, argv, positional=positional).values)


@pytest.mark.parametrize(
    "argv",
    [
        ("-DataSource", "web01:/srv"),
        ("-datasource", "web01:/srv"),
        ("--data-source", "web01:/srv"),
        ("--datasource", "web01:/srv"),
        ("--data_source", "web01:/srv"),
        ("-DataSource:web01:/srv",),
        ("--data-source=web01:/srv",),
        ("web01:/srv",),
    ],
)
def test_parameter_spellings(argv: tuple[str, ...]) -> None:
    assert run(*argv) == {"DataSource": "web01:/srv"}


def test_switches_and_explicit_switch_values() -> None:
    assert run("x", "-Wait")["Wait"] is True
    assert run("x", "-Wait:$false")["Wait"] is False
    assert run("x", "--wait=true")["Wait"] is True
    with pytest.raises(UsageError, match=r"-Wait is a switch"):
        run("x", "-Wait:maybe")


def test_lists_split_on_commas_and_repeat() -> None:
    values = run("x", "-Path", "/a,/b", "--path", "/c", "-Path", r"/with\,comma")
    assert values["Path"] == ["/a", "/b", "/c", "/with,comma"]


def test_split_list_drops_empty_items() -> None:
    assert split_list("a,,b,") == ["a", "b"]
    assert split_list(r"a\\b") == [r"a\\b"]


def test_value_may_start_with_a_dash_unless_it_names_a_parameter() -> None:
    assert run("-DataSource", "-odd-name")["DataSource"] == "-odd-name"
    with pytest.raises(UsageError, match=r"^Test-Thing -DataSource needs a value$"):
        run("-DataSource", "-Wait")
    with pytest.raises(UsageError, match=r"-DataSource needs a value"):
        run("-DataSource")


def test_unknown_parameter_suggests_the_closest() -> None:
    with pytest.raises(
        UsageError, match=r"unknown parameter -DataSorce; did you mean -DataSource\?"
    ):
        run("-DataSorce", "x")
    with pytest.raises(UsageError, match=r"unknown parameter --jsn; did you mean -Json\?"):
        run("x", "--jsn")
    with pytest.raises(UsageError, match=r"unknown parameter -Zzzzzz$"):
        run("x", "-Zzzzzz")


def test_required_and_positional() -> None:
    with pytest.raises(UsageError, match=r"^Test-Thing needs -DataSource$"):
        run("-Wait")
    with pytest.raises(UsageError, match=r"unexpected argument 'y'"):
        run("x", "y")
    with pytest.raises(UsageError, match=r"unexpected argument 'x'"):
        run("x", positional=None)


def test_numbers_and_choices() -> None:
    values = run("x", "-Limit", "5", "-Timeout", "2.5", "-Tier", "cloud")
    assert values == {"DataSource": "x", "Limit": 5, "Timeout": 2.5, "Tier": "Cloud"}
    with pytest.raises(UsageError, match=r"-Limit needs an integer, not 'five'"):
        run("x", "-Limit", "five")
    with pytest.raises(UsageError, match=r"-Limit must be at least 1, not 0"):
        run("x", "-Limit", "0")
    with pytest.raises(UsageError, match=r"-Tier must be one of Disk, Cloud, not 'Tape'"):
        run("x", "-Tier", "Tape")


def test_single_value_given_twice_is_an_error() -> None:
    with pytest.raises(UsageError, match=r"-DataSource given twice"):
        run("-DataSource", "a", "-DataSource", "b")


def test_common_parameters_are_accepted_everywhere() -> None:
    values = run("x", "-Json", "-Server", "h:1", "-Token", "t", "--ca-file", "/ca.pem")
    assert values == {
        "DataSource": "x",
        "Json": True,
        "Server": "h:1",
        "Token": "t",
        "CaFile": "/ca.pem",
    }


def test_normalise() -> None:
    assert normalise("--Data-Source") == normalise("data_source") == "datasource"
