"""Pure parts of the tree walk: exclude patterns and the planning of roots."""

from __future__ import annotations

import os

import pytest

from storage_pool.excludes import Excludes
from storage_pool.walk_roots import RootNode, absolute_roots, plan_roots


@pytest.mark.parametrize(
    ("pattern", "path", "excluded"),
    [
        # No '/': the name of the object, at any depth.
        ("*.tmp", b"/home/ann/a.tmp", True),
        ("*.tmp", b"/home/ann/a.tmp.keep", False),
        (".cache", b"/home/ann/.cache", True),
        (".cache", b"/home/ann/.cache-not", False),
        ("core.[0-9]*", b"/srv/core.12", True),
        ("core.[!0-9]*", b"/srv/core.12", False),
        ("?.log", b"/var/a.log", True),
        ("?.log", b"/var/ab.log", False),
        # A leading '/': anchored absolute path; '*' stays inside one component.
        ("/home/*/.cache", b"/home/ann/.cache", True),
        ("/home/*/.cache", b"/home/ann/x/.cache", False),
        ("/etc/ssh", b"/etc/ssh", True),
        ("/etc/ssh", b"/x/etc/ssh", False),
        ("/etc/ssh/", b"/etc/ssh", True),
        # '/' inside but not leading: the path may start at any directory.
        ("ann/tmp", b"/home/ann/tmp", True),
        ("ann/tmp", b"/srv/ann/tmp", True),
        ("ann/tmp", b"/srv/joann/tmp", False),
        # '**' crosses directories, none included.
        ("/var/**/cache", b"/var/cache", True),
        ("/var/**/cache", b"/var/lib/apt/cache", True),
        ("/var/**/cache", b"/usr/var/cache", False),
        ("/home/**", b"/home/ann/deep/file", True),
        ("**/node_modules", b"/src/app/node_modules", True),
        # Undecodable names match as surrogate escapes.
        ("caf*", b"/x/caf\xe9", True),
    ],
)
def test_exclude_patterns(pattern: str, path: bytes, excluded: bool) -> None:
    """Guards the documented pattern rules (excludes.py), like restic's --exclude."""
    assert Excludes([pattern]).match(path) is excluded


def test_exclude_rejects_an_empty_pattern() -> None:
    with pytest.raises(ValueError, match="empty"):
        Excludes(["/"])


def _roots(node: RootNode) -> list[bytes]:
    if node.is_root:
        return [node.rel]
    return [r for child in node.sorted_children() for r in _roots(child)]


def test_plan_merges_overlapping_roots_and_keeps_ancestors() -> None:
    """Guards root merging: `/a` covers `/a/b` whichever comes first; ancestors of a root
    are planned nodes that are not roots themselves."""
    top = plan_roots(b"/", [b"/a/b", b"/home/ann/docs", b"/a", b"/home/ann/docs/x", b"/etc"])
    assert _roots(top) == [b"a", b"etc", b"home/ann/docs"]
    home = top.children[b"home"]
    assert not home.is_root and home.full == b"/home"
    assert home.children[b"ann"].rel == b"home/ann"
    assert not home.children[b"ann"].is_root
    assert top.children[b"a"].children == {}


def test_plan_with_the_base_as_root() -> None:
    top = plan_roots(b"/srv/tree", [b"/srv/tree"])
    assert top.is_root and top.rel == b""
    with pytest.raises(ValueError, match="not below"):
        plan_roots(b"/srv/tree", [b"/srv/other"])
    with pytest.raises(ValueError, match="not normalised"):
        plan_roots(b"/", [b"/srv/../etc"])


def test_absolute_roots_normalise_and_resolve_ancestors(tmp_path: os.PathLike[str]) -> None:
    """Guards ancestors being real directories: a symlinked parent is resolved, the root
    itself is kept as named (a symlink root is backed up as the symlink)."""
    real = os.fsencode(tmp_path) + b"/real"
    os.mkdir(real)
    os.symlink(real, os.fsencode(tmp_path) + b"/alias")
    got = absolute_roots(
        [os.fsdecode(tmp_path) + "/alias/./docs/", os.fsencode(tmp_path) + b"/alias"]
    )
    assert got == [real + b"/docs", os.fsencode(tmp_path) + b"/alias"]
    with pytest.raises(ValueError, match="not an absolute path"):
        absolute_roots(["relative/path"])
