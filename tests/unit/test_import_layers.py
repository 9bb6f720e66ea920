"""Import layering: imports only go server -> agent.protocol, server -> storage_pool,
agent -> storage_pool (DESIGN.md, "Processes and packages").

import-linter checks the same contracts in `make lint` (pyproject.toml); this AST walk needs
nothing but the standard library, runs with the tests and names the file and line.
The fresh-interpreter import test catches import cycles and warnings at import time
(like aiohttp's tests/test_circular_imports.py).
"""

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("server", "agent", "storage_pool")


def _python_files(package: str) -> list[Path]:
    directory = ROOT / package
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob("*.py") if "__pycache__" not in p.parts)


def _absolute_imports(source: str, filename: str) -> Iterator[tuple[str, int]]:
    """Yield (module name, line) for every import in ``source``.

    Relative imports are yielded as "." + module so callers can tell them apart.
    """
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                yield "." * node.level + (node.module or ""), node.lineno
            else:
                yield node.module or "", node.lineno


def _top_level(module: str) -> str:
    return module.split(".", 1)[0]


def _forbidden_imports(path: Path, forbidden: set[str]) -> list[str]:
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return [
        f"{rel}:{line}: imports {module!r}"
        for module, line in _absolute_imports(path.read_text(encoding="utf-8"), str(path))
        if _top_level(module) in forbidden
    ]


def _non_stdlib_imports(path: Path) -> list[str]:
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return [
        f"{rel}:{line}: imports {module!r}, which is not in the standard library"
        for module, line in _absolute_imports(path.read_text(encoding="utf-8"), str(path))
        if module.startswith(".")
        or (_top_level(module) not in sys.stdlib_module_names and module != "__future__")
    ]


def test_checker_catches_forbidden_imports(tmp_path: Path) -> None:
    """Guards against a checker that silently never fails."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os\nimport server.cli\nfrom agent import protocol\nfrom . import sibling\n",
        encoding="utf-8",
    )
    assert _forbidden_imports(bad, {"server", "agent"}) == [
        f"{bad}:2: imports 'server.cli'",
        f"{bad}:3: imports 'agent'",
    ]
    assert [v.split(": ", 1)[0] for v in _non_stdlib_imports(bad)] == [
        f"{bad}:2",
        f"{bad}:3",
        f"{bad}:4",
    ]


def test_storage_pool_imports_nothing_of_server_or_agent() -> None:
    violations = [
        v
        for path in _python_files("storage_pool")
        for v in _forbidden_imports(path, {"server", "agent"})
    ]
    assert not violations, "storage_pool must not import server or agent:\n" + "\n".join(violations)


def test_agent_never_imports_server() -> None:
    violations = [
        v for path in _python_files("agent") for v in _forbidden_imports(path, {"server"})
    ]
    assert not violations, "agent must not import server:\n" + "\n".join(violations)


def test_agent_protocol_imports_only_stdlib() -> None:
    violations = _non_stdlib_imports(ROOT / "agent" / "protocol.py")
    assert not violations, "agent/protocol.py must be a stdlib-only leaf:\n" + "\n".join(violations)


def _module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in _python_files(package):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if not (path.parent / "__init__.py").is_file():
                continue  # not importable as part of the package (stray script or data)
            if parts[-1] == "__init__":
                parts.pop()
            elif parts[-1] == "__main__":
                continue  # running it is not importing it
            names.append(".".join(parts))
    return sorted(names)


@pytest.mark.parametrize("module", _module_names())
def test_module_imports_cleanly_in_fresh_interpreter(module: str) -> None:
    """Each module imports on its own, with warnings as errors (no cycles, no deprecations)."""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import {module}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"import {module} failed:\n{result.stderr}"
