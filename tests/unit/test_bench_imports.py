"""The benchmarks and the fuzzer share one harness (bench/harness.py) and import in one direction:
no module imports `bench.run` (it is an entry point, `python -m bench.run`), bench/harness.py
imports no other module of bench/, and the import graph of bench/ and fuzz/ has no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bench", "fuzz")
ENTRY_POINTS = frozenset({"bench.run"})
HARNESS = "bench.harness"


def modules(root: Path) -> dict[str, set[str]]:
    """Every module of bench/ and fuzz/ and the modules of bench/ and fuzz/ it imports, at any
    depth of the file (a function's own imports count too)."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            names: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module)
                    names.update(f"{node.module}.{alias.name}" for alias in node.names)
            graph[".".join(parts)] = {n for n in names if n.split(".")[0] in PACKAGES}
    known = set(graph)
    # `from bench import harness` names the module bench.harness; `from bench.x import y` the
    # module bench.x (y is a name in it). A module that imports itself (`python -m bench.clients`
    # runs through the imported module, so a spawned process unpickles its names) is no edge.
    return {m: {n for n in names if n in known and n != m} for m, names in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles, each as the path that closes it (a depth-first search)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def problems(root: Path) -> list[str]:
    graph = modules(root)
    out = [
        f"{m} imports {target}"
        for m, targets in sorted(graph.items())
        for target in sorted(targets & ENTRY_POINTS)
    ]
    out += [f"{HARNESS} imports {t}" for t in sorted(graph.get(HARNESS, ()))]
    out += ["cycle: " + " -> ".join(c) for c in cycles(graph)]
    return out


def test_bench_and_fuzz_import_one_way_through_the_harness() -> None:
    assert problems(ROOT) == []


def test_the_benchmarks_and_the_fuzzer_share_the_harness() -> None:
    graph = modules(ROOT)
    users = ("bench.run", "bench.search", "bench.loadtest", "bench.clients", "fuzz.__main__")
    assert all(HARNESS in graph[m] for m in users), {m: graph[m] for m in users}


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_checker_finds_an_entry_point_import_and_a_cycle(tmp_path: Path) -> None:
    write(tmp_path, "bench/__init__.py", "")
    write(tmp_path, "fuzz/__init__.py", "")
    write(tmp_path, "bench/harness.py", "import os\n")
    write(tmp_path, "bench/run.py", "from bench import harness, search\n")
    write(tmp_path, "bench/search.py", "from bench.harness import ROOT\n")
    write(tmp_path, "fuzz/__main__.py", "def main():\n    from bench.harness import serve\n")
    assert problems(tmp_path) == []

    write(tmp_path, "bench/search.py", "from bench.run import conditions\n")
    write(tmp_path, "bench/harness.py", "from bench.load import Cpu\n")
    write(tmp_path, "bench/load.py", "def f():\n    from bench.harness import ROOT\n")
    assert problems(tmp_path) == [
        "bench.search imports bench.run",
        "bench.harness imports bench.load",
        "cycle: bench.harness -> bench.load -> bench.harness",
        "cycle: bench.run -> bench.search -> bench.run",
    ]
