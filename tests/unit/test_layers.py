"""Imports run one way only (docs/architecture.md): parse every import of every project module and
check it against its layer. Every module of the project belongs to a layer; a module that belongs
to none is itself a failure, so a new package cannot slip past the rule."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("compartments", "capability", "fhir_server", "migrations")

LEAVES = (
    "fhir_server.errors",
    "fhir_server.settings",
    "fhir_server.metrics",
    "fhir_server.tracing",
)
BASICS = ("capability", "compartments", *LEAVES)
BELOW_STORAGE = (
    *BASICS,
    "fhir_server.validation",
    "fhir_server.auth",
    "fhir_server.search",
    "fhir_server.clients",
)
STORAGE = (*BELOW_STORAGE, "fhir_server.storage")
FORMATS = (*STORAGE, "fhir_server.services.formats")
ACCESS = (*FORMATS, "fhir_server.services.access")
SERVICE_CORE = (
    *ACCESS,
    "fhir_server.services.context",
    "fhir_server.services.result",
    "fhir_server.services.offload",
)
INTERACTIONS = (*SERVICE_CORE, "fhir_server.services.interactions")
SERVICES = (*INTERACTIONS, "fhir_server.services.workflows", "fhir_server.services")
AUDIT = (*SERVICES, "fhir_server.audit")
API = (*AUDIT, "fhir_server.api")
# The HTTP layers beside api/ (DESIGN.md 2.1): the pages, and the authorization server, which
# shows pages.
WEB = (*API, "fhir_server.web")
OAUTH = (*WEB, "fhir_server.oauth")

# The FHIRPath compiler's own modules, each above the ones it may import.
FHIRPATH = "fhir_server.search.fhirpath"
FHIRPATH_BASE = (f"{FHIRPATH}.base",)
FHIRPATH_MODEL = (*FHIRPATH_BASE, f"{FHIRPATH}.model", "capability")
FHIRPATH_LAYERS: dict[str, tuple[str, ...]] = {
    f"{FHIRPATH}.base": (),
    f"{FHIRPATH}.lexer": FHIRPATH_BASE,
    f"{FHIRPATH}.parser": (*FHIRPATH_BASE, f"{FHIRPATH}.lexer"),
    f"{FHIRPATH}.model": FHIRPATH_MODEL,
    f"{FHIRPATH}.references": (*FHIRPATH_MODEL, "compartments.references"),
    f"{FHIRPATH}.runtime": FHIRPATH_MODEL,
    f"{FHIRPATH}.compiler": (
        *FHIRPATH_MODEL,
        f"{FHIRPATH}.parser",
        f"{FHIRPATH}.references",
        f"{FHIRPATH}.runtime",
    ),
    FHIRPATH: (FHIRPATH,),  # the package's own __init__ re-exports the public names
}

# For each layer (a module or a package, longest prefix wins), the project modules it may import.
ALLOWED: dict[str, tuple[str, ...]] = {
    "compartments": ("compartments",),
    "capability": ("capability",),
    **dict.fromkeys(LEAVES, ()),
    "fhir_server": (),  # the package's own __init__
    "fhir_server.validation": ("capability", "fhir_server.errors"),
    "fhir_server.auth": ("compartments.ids", "fhir_server.auth", "fhir_server.errors"),
    "fhir_server.search": (
        "capability",
        "compartments",
        "fhir_server.search",
        "fhir_server.errors",
    ),
    **FHIRPATH_LAYERS,
    # the grants handed to storage as values: a leaf beside the query they may carry
    "fhir_server.search.grants": ("fhir_server.search.query",),
    "fhir_server.clients": ("fhir_server.clients", "fhir_server.errors", "fhir_server.tracing"),
    "fhir_server.storage": (
        "capability",
        "compartments.ids",
        "fhir_server.search",
        "fhir_server.storage",
        "fhir_server.errors",
        "fhir_server.settings",
        "fhir_server.tracing",
    ),
    "fhir_server.services": SERVICES,  # the package's own __init__
    "fhir_server.services.formats": FORMATS,
    "fhir_server.services.access": ACCESS,
    "fhir_server.services.context": ACCESS,
    "fhir_server.services.result": STORAGE,
    "fhir_server.services.offload": STORAGE,
    "fhir_server.services.interactions": INTERACTIONS,
    "fhir_server.services.workflows": SERVICES,
    "fhir_server.audit": AUDIT,
    "fhir_server.api": API,
    "fhir_server.web": WEB,
    "fhir_server.oauth": OAUTH,
    "fhir_server.app": OAUTH,
    "fhir_server.embedded": LEAVES,
    "fhir_server.cli": (*OAUTH, "fhir_server.app", "fhir_server.embedded", "fhir_server"),
    "migrations": ("migrations", "fhir_server.storage", "fhir_server.search", "capability"),
}
WEB_AND_DB = ("fastapi", "starlette", "sqlalchemy", "psycopg", "uvicorn", "httpx")
NO_WEB_OR_DB = (
    "compartments",
    "capability",
    "fhir_server.auth",
    "fhir_server.search",
    "fhir_server.validation",
    *LEAVES,
)
NO_WEB = ("fhir_server.services", "fhir_server.storage", "fhir_server.audit", "fhir_server.clients")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[str]:
    """Every module a file imports, absolute; `from x import y` counts as `x.y` when y is one."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


# Packages whose own __init__ is a layer, but whose other modules must each fall in a sub-layer.
EXACT = frozenset({"fhir_server", "fhir_server.services", FHIRPATH})


def layer_of(module: str) -> str | None:
    matches = [
        layer
        for layer in ALLOWED
        if module == layer or (layer not in EXACT and module.startswith(layer + "."))
    ]
    if not matches:
        return None
    layer = max(matches, key=len)
    # Inside an EXACT package, a module needs a layer of its own, not one of the package's parents.
    if any(module.startswith(exact + ".") and len(layer) < len(exact) for exact in EXACT):
        return None
    return layer


def starts(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def allowed(module: str, name: str) -> bool:
    """Whether `module` may import `name`: a project name must fall in the module's layer."""
    layer = layer_of(module)
    assert layer is not None
    if not starts(name, PACKAGES):
        return True  # a third-party package
    # `from package import name` counts as `package.name`, which may be a name, not a module.
    target = layer_of(name) or layer_of(name.rpartition(".")[0])
    return target is not None and (starts(name, ALLOWED[layer]) or starts(target, ALLOWED[layer]))


def violations(root: Path) -> list[str]:
    problems = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(root, path)
            if layer_of(module) is None:
                problems.append(f"{module} belongs to no layer")
                continue
            for name in imports(path):
                if starts(name, PACKAGES) and not allowed(module, name):
                    problems.append(f"{module} imports {name}")
                if starts(module, NO_WEB_OR_DB) and starts(name, WEB_AND_DB):
                    problems.append(f"{module} imports {name}")
                if starts(module, NO_WEB) and starts(name, ("fastapi", "starlette")):
                    problems.append(f"{module} imports {name}")
    return sorted(set(problems))


def test_imports_follow_the_layers() -> None:
    assert violations(ROOT) == []


def test_every_package_of_the_server_has_a_layer() -> None:
    packages = {
        module_name(ROOT, path.parent)
        for path in (ROOT / "fhir_server").rglob("__init__.py")
        if path.parent != ROOT / "fhir_server"
    }
    assert {"fhir_server.api", "fhir_server.audit", "fhir_server.clients"} <= packages
    assert all(layer_of(package) is not None for package in packages)


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_checker_fails_on_an_upward_import(tmp_path: Path) -> None:
    write(tmp_path, "fhir_server/storage/fine.py", "from fhir_server.search import index\n")
    write(tmp_path, "fhir_server/api/fine.py", "from fhir_server.audit.trail import AuditTrail\n")
    assert violations(tmp_path) == []

    write(
        tmp_path, "fhir_server/storage/bad.py", "from fhir_server.services.context import Context\n"
    )
    write(tmp_path, "fhir_server/audit/bad.py", "from fhir_server.api import deps\n")
    write(tmp_path, "fhir_server/oauth/fine.py", "from fhir_server.web.render import page\n")
    write(tmp_path, "fhir_server/web/bad.py", "from fhir_server.oauth import grants\n")
    write(
        tmp_path,
        "fhir_server/services/workflows/bad.py",
        "from fhir_server.web.render import page\n",
    )
    write(tmp_path, "fhir_server/api/bad.py", "import fhir_server.oauth.grants\n")
    write(
        tmp_path, "fhir_server/services/access/bad.py", "import fhir_server.services.interactions\n"
    )
    write(
        tmp_path,
        "fhir_server/services/formats/web.py",
        "from starlette.responses import Response\n",
    )
    write(tmp_path, "fhir_server/newpackage/thing.py", "x = 1\n")
    write(
        tmp_path,
        "fhir_server/search/fhirpath/parser.py",
        "from fhir_server.search.fhirpath.compiler import compile_expression\n",
    )
    write(tmp_path, "fhir_server/search/fhirpath/extra.py", "x = 1\n")
    assert violations(tmp_path) == [
        "fhir_server.api.bad imports fhir_server.oauth.grants",
        "fhir_server.audit.bad imports fhir_server.api",
        "fhir_server.audit.bad imports fhir_server.api.deps",
        "fhir_server.newpackage.thing belongs to no layer",
        "fhir_server.search.fhirpath.extra belongs to no layer",
        "fhir_server.search.fhirpath.parser imports fhir_server.search.fhirpath.compiler",
        (
            "fhir_server.search.fhirpath.parser imports "
            "fhir_server.search.fhirpath.compiler.compile_expression"
        ),
        "fhir_server.services.access.bad imports fhir_server.services.interactions",
        "fhir_server.services.formats.web imports starlette.responses",
        "fhir_server.services.formats.web imports starlette.responses.Response",
        "fhir_server.services.workflows.bad imports fhir_server.web.render",
        "fhir_server.services.workflows.bad imports fhir_server.web.render.page",
        "fhir_server.storage.bad imports fhir_server.services.context",
        "fhir_server.storage.bad imports fhir_server.services.context.Context",
        "fhir_server.web.bad imports fhir_server.oauth",
        "fhir_server.web.bad imports fhir_server.oauth.grants",
    ]
