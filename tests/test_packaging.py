"""pyproject.toml's `requires-python` admits only interpreters that can import the code: a
standard-library module newer than its lower bound would install fine and then fail at import."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["cli", "benchmarks", "engine", "loaders", "kernels", "scripts"]
# standard-library modules the code might reach for, with the Python version that added them
NEW_STDLIB = {"tomllib": (3, 11), "zoneinfo": (3, 9), "graphlib": (3, 9), "wsgiref.types": (3, 11)}


def _lower_bound(spec: str) -> tuple[int, int]:
    (clause,) = [c.strip() for c in spec.split(",") if c.strip().startswith(">=")]
    major, minor = clause[2:].strip().split(".")[:2]
    return int(major), int(minor)


def _stdlib_imports_by_file() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    if name in NEW_STDLIB:
                        found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return found


def test_lower_bound_parses():
    assert _lower_bound(">=3.11") == (3, 11)
    assert _lower_bound(">=3.11.2, <4") == (3, 11)


def test_requires_python_covers_every_stdlib_import():
    spec = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    bound = _lower_bound(spec)
    imports = _stdlib_imports_by_file()
    assert "tomllib" in imports  # the reason for the bound: engine/config.py reads TOML with it
    too_new = {name: sorted(files) for name, files in imports.items() if NEW_STDLIB[name] > bound}
    assert not too_new, f"requires-python {spec!r} admits interpreters without {too_new}"
