"""Imports run one way only (docs/architecture.md): parse every import and check it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# For each layer, the project modules it may import (prefix match); leaves import none.
ALLOWED: dict[str, tuple[str, ...]] = {
    "compartments": ("compartments",),
    "capability": ("capability",),
    "fhir_server.errors": (),
    "fhir_server.settings": (),
    "fhir_server.metrics": (),
    "fhir_server.tracing": (),
    "fhir_server.validation": ("capability", "fhir_server.errors"),
    "fhir_server.auth": ("fhir_server.auth", "fhir_server.errors"),
    "fhir_server.search": ("capability", "fhir_server.search", "fhir_server.errors"),
    "fhir_server.storage": (
        "capability",
        "fhir_server.search",
        "fhir_server.storage",
        "fhir_server.errors",
        "fhir_server.settings",
        "fhir_server.tracing",
    ),
    "fhir_server.services": (
        "capability",
        "compartments",
        "fhir_server.auth",
        "fhir_server.search",
        "fhir_server.storage",
        "fhir_server.services",
        "fhir_server.validation",
        "fhir_server.errors",
        "fhir_server.settings",
        "fhir_server.metrics",
        "fhir_server.tracing",
    ),
}
WEB_AND_DB = ("fastapi", "starlette", "sqlalchemy", "psycopg", "uvicorn")
NO_WEB_OR_DB = (
    "compartments",
    "capability",
    "fhir_server.auth",
    "fhir_server.search",
    "fhir_server.validation",
)
NO_WEB = ("fhir_server.services", "fhir_server.storage")
PROJECT = ("compartments", "capability", "fhir_server", "migrations")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def layer_of(module: str) -> str | None:
    matches = [layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")]
    return max(matches, key=len) if matches else None


def starts(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_imports_follow_the_layers() -> None:
    problems = []
    for package in ("compartments", "capability", "fhir_server"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = module_name(path)
            layer = layer_of(module)
            for name in imports(path):
                if layer is not None and starts(name, PROJECT) and not starts(name, ALLOWED[layer]):
                    problems.append(f"{module} imports {name}")
                if starts(module, NO_WEB_OR_DB) and starts(name, WEB_AND_DB):
                    problems.append(f"{module} imports {name}")
                if starts(module, NO_WEB) and starts(name, ("fastapi", "starlette")):
                    problems.append(f"{module} imports {name}")
    assert problems == []


def test_the_checker_catches_a_wrong_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from fhir_server.api import deps\nimport sqlalchemy\n")
    assert imports(bad) == ["fhir_server.api", "sqlalchemy"]
    assert layer_of("fhir_server.search.fhirpath") == "fhir_server.search"
    assert not starts("fhir_server.api", ALLOWED["fhir_server.search"])
