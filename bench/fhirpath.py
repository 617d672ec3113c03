"""Compiled FHIRPath cost per resource: every SearchParameter accessor of a resource's type run
over it, as indexing a write does (`python -m bench.fhirpath`).

Over the R4 examples in tests/data/r4-examples, each example timed alone (best of five rounds),
in microseconds per resource: the median and mean over the examples, and two typical resources.
Beside it, fhirpathpy (the interpreter the tests compare with) on the expressions that both
evaluate (those without resolve(), rewritten as tests/unit/test_fhirpath.py does).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
from collections.abc import Callable
from typing import Any

from bench.harness import per_call_us, r4_examples
from fhir_server.search.parameters import search_params

TYPICAL = ("Patient-example", "Observation-example")

Run = Callable[[dict[str, Any]], object]


def compiled(resource_type: str, *, comparable: bool) -> tuple[int, Run]:
    accessors = [
        param.accessor
        for param in search_params(resource_type).values()
        if param.accessor is not None
        and param.expression is not None
        and not (comparable and "resolve()" in param.expression)
    ]

    def run(resource: dict[str, Any]) -> object:
        return [accessor(resource) for accessor in accessors]

    return len(accessors), run


def interpreted(resource_type: str) -> tuple[int, Run] | None:
    try:
        from fhirpathpy import compile as fhirpathpy_compile
        from fhirpathpy.models import models
    except ImportError:
        return None
    model = models["r4"]
    functions = []
    for param in search_params(resource_type).values():
        expression = param.expression
        if param.accessor is None or expression is None or "resolve()" in expression:
            continue
        # fhirpathpy does not take `Resource.id` for a Patient's, nor `as` on several items.
        expression = re.sub(r"\b(Resource|DomainResource)\.", f"{resource_type}.", expression)
        expression = re.sub(r"\(([^()]*?) as (\w+)\)", r"(\1.ofType(\2))", expression)
        functions.append(fhirpathpy_compile(expression, model))

    def run(resource: dict[str, Any]) -> object:
        return [function(resource) for function in functions]

    return len(functions), run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.05, help="seconds per example")
    parser.add_argument("--no-fhirpathpy", action="store_true", help="time the compiler only")
    args = parser.parse_args()

    corpus = r4_examples()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {len(corpus)} examples"
    )
    builders: dict[str, Callable[[str], tuple[int, Run] | None]] = {
        "compiled, every accessor": lambda t: compiled(t, comparable=False),
        "compiled, without resolve()": lambda t: compiled(t, comparable=True),
    }
    if not args.no_fhirpathpy:
        builders["fhirpathpy, without resolve()"] = interpreted
    print(f"\n  {'accessors':30} {'expr/res':>8} {'median':>8} {'mean':>8} {'µs/expr':>8} ", end="")
    print(" ".join(f"{t:>20}" for t in TYPICAL))
    for name, build in builders.items():
        times: dict[str, float] = {}
        counts: dict[str, int] = {}
        for example, resource in corpus.items():
            built = build(resource["resourceType"])
            if built is None:
                break
            counts[example], run = built
            times[example] = per_call_us(run, resource, args.budget)
        if not times:
            print(f"  {name:30} not installed")
            continue
        per_expression = sum(times.values()) / sum(counts.values())
        typical = " ".join(f"{times[t]:>20.1f}" for t in TYPICAL)
        print(
            f"  {name:30} {statistics.fmean(counts.values()):>8.1f} "
            f"{statistics.median(times.values()):>8.1f} {statistics.fmean(times.values()):>8.1f} "
            f"{per_expression:>8.2f} {typical}"
        )


if __name__ == "__main__":
    main()
