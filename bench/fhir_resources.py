"""fhir.resources as a second, independent oracle for validation (issue 12 item 8).

Runs the official R4 examples (tests/data/r4-examples) and mutations of them (one defect each:
an unknown element, a wrong JSON type, a bad date, a bad code, ...) through the `fhir.resources`
models installed in the running interpreter, and, when the server is importable, through the
server's own validator (fhir_server/validation.py) too: it prints the µs per resource of each and
every case where the two disagree on valid/invalid.

`fhir.resources` 7 and 8 (pydantic 2, the server's) model R5 and R4B, not R4: they are used
through `fhir.resources.R4B`. The last release that models R4 (4.0.1) is 6.1.0, on pydantic 1,
which cannot share an environment with the server (FastAPI needs pydantic 2); to compare with it,
run this file in a separate environment to get its verdicts, then here to compare:

    python -m venv /tmp/fr6 && /tmp/fr6/bin/pip install "fhir.resources==6.1.0" "pydantic<2"
    /tmp/fr6/bin/python bench/fhir_resources.py --verdicts > /tmp/r4-verdicts.json
    .venv/bin/python -m bench.fhir_resources --other /tmp/r4-verdicts.json

Needs only the standard library and `fhir.resources` (the server's validator when it is there).
The decision and its figures: docs/architecture.md, "fhir.resources".
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.harness import r4_examples

Resource = dict[str, Any]
Verdict = Callable[[Resource], bool]  # True when the resource is valid

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _first(resource: Resource, test: Callable[[str, Any], bool]) -> tuple[Any, str] | None:
    """The first (container, key) below `resource` whose (key, value) passes `test`."""
    stack: list[Any] = [resource]
    while stack:
        node = stack.pop(0)
        if isinstance(node, dict):
            for key, value in node.items():
                if key != "resourceType" and test(key, value):
                    return node, key
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return None


def mutations(resource: Resource) -> Iterator[tuple[str, Resource]]:
    """One defect each; a mutation that does not apply to `resource` is skipped."""

    def change(name: str, apply: Callable[[Resource], bool]) -> Iterator[tuple[str, Resource]]:
        copied = copy.deepcopy(resource)
        if apply(copied):
            yield name, copied

    def set_top(key: str, value: Any) -> Callable[[Resource], bool]:
        def apply(r: Resource) -> bool:
            r[key] = value
            return True

        return apply

    def at(test: Callable[[str, Any], bool], new: Callable[[Any], Any]) -> Callable[..., bool]:
        def apply(r: Resource) -> bool:
            found = _first(r, test)
            if found is None:
                return False
            node, key = found
            node[key] = new(node[key])
            return True

        return apply

    def nested_unknown(r: Resource) -> bool:
        found = _first(r, lambda k, v: isinstance(v, dict) and k not in {"text", "meta"})
        if found is None:
            return False
        found[0][found[1]]["notAnElement"] = True
        return True

    def drop_status(r: Resource) -> bool:
        return r.pop("status", None) is not None

    yield from change("unknown-element", set_top("notAnElement", 1))
    yield from change("nested-unknown-element", nested_unknown)
    yield from change("id-not-a-string", set_top("id", 123))
    yield from change("id-bad-characters", set_top("id", "a_b!"))
    yield from change("id-too-long", set_top("id", "x" * 65))
    yield from change("empty-string", set_top("language", ""))
    yield from change("extension-without-url", set_top("extension", [{"valueString": "x"}]))
    yield from change("bad-code", at(lambda k, v: k in {"status", "gender"}, lambda v: "nonsense"))
    yield from change("no-status", drop_status)
    yield from change(
        "impossible-date",
        at(lambda k, v: isinstance(v, str) and bool(_DATE.match(v)), lambda v: "2020-13-45"),
    )
    yield from change(
        "scalar-for-array",
        at(lambda k, v: isinstance(v, list) and bool(v) and k != "contained", lambda v: v[0]),
    )
    yield from change(
        "array-for-scalar",
        at(lambda k, v: isinstance(v, str) and k not in {"div", "id"}, lambda v: [v]),
    )
    yield from change(
        "number-as-string",
        at(lambda k, v: type(v) in (int, float) and not isinstance(v, bool), lambda v: str(v)),
    )
    yield from change(
        "boolean-as-string",
        at(lambda k, v: isinstance(v, bool), lambda v: "true" if v else "false"),
    )
    yield from change("null-element", at(lambda k, v: isinstance(v, str), lambda v: None))


def cases() -> list[tuple[str, Resource]]:
    found = []
    for name, resource in r4_examples().items():
        found.append((f"{name}: as published", resource))
        found.extend((f"{name}: {kind}", mutated) for kind, mutated in mutations(resource))
    return found


def fhir_resources_verdict() -> tuple[str, Verdict]:
    import fhir.resources as fr

    version = fr.__version__
    if int(version.split(".")[0]) >= 7:
        from fhir.resources.R4B import get_fhir_model_class

        def valid(resource: Resource) -> bool:
            try:
                klass = get_fhir_model_class(resource["resourceType"])
                klass.model_validate(resource)
            except Exception:
                return False
            return True

        return f"fhir.resources {version} (R4B 4.3.0)", valid

    from fhir.resources import construct_fhir_element

    def valid_r4(resource: Resource) -> bool:
        try:
            construct_fhir_element(resource["resourceType"], resource)
        except Exception:
            return False
        return True

    return f"fhir.resources {version} (R{fr.__fhir_version__})", valid_r4


def server_verdict() -> tuple[str, Verdict] | None:
    try:
        from fhir_server.validation import ResourceValidator
    except ImportError:
        return None
    validator = ResourceValidator()

    def valid(resource: Resource) -> bool:
        return not validator.issues(resource)

    return "the server's validator (fhir_server/validation.py)", valid


def micros_per_resource(valid: Verdict, resources: list[Resource], rounds: int = 7) -> float:
    """Median over `rounds` of the mean µs per resource, the examples as published."""
    for resource in resources:
        valid(resource)  # warm: model classes built, schemas compiled
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for resource in resources:
            valid(resource)
        times.append((time.perf_counter() - start) / len(resources) * 1e6)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verdicts", action="store_true", help="print this oracle's verdicts")
    parser.add_argument("--other", type=Path, help="verdicts of another oracle to compare too")
    args = parser.parse_args(argv)
    all_cases = cases()
    published = [resource for name, resource in all_cases if name.endswith(": as published")]
    oracles = [fhir_resources_verdict()]
    server = server_verdict()
    if server is not None and not args.verdicts:
        oracles.append(server)
    verdicts = {label: {name: valid(r) for name, r in all_cases} for label, valid in oracles}
    if args.verdicts:
        label, valid = oracles[0]
        us = micros_per_resource(valid, published)
        json.dump({"label": label, "us": us, "verdicts": verdicts[label]}, sys.stdout)
        return 0
    timings = {label: micros_per_resource(valid, published) for label, valid in oracles}
    if args.other is not None:
        other = json.loads(args.other.read_text())
        verdicts[other["label"]] = other["verdicts"]
        timings[other["label"]] = other["us"]
    print(f"{len(published)} examples, {len(all_cases) - len(published)} mutations\n")
    for label, us in timings.items():
        valid_examples = sum(verdicts[label][n] for n, _ in all_cases if n.endswith("published"))
        caught = sum(not verdicts[label][n] for n, _ in all_cases if not n.endswith("published"))
        print(
            f"{label}: {us:,.0f} µs per resource; examples valid {valid_examples}/"
            f"{len(published)}; mutations refused {caught}/{len(all_cases) - len(published)}"
        )
    labels = list(verdicts)
    reference = labels[-1] if server is None else server[0]
    for label in labels:
        if label == reference:
            continue
        differ = [n for n, _ in all_cases if verdicts[label][n] != verdicts[reference][n]]
        print(f"\n{label} vs {reference}: {len(differ)} disagreements")
        kinds: dict[str, list[str]] = {}
        for name in differ:
            example, kind = name.split(": ", 1)
            verdict = "valid" if verdicts[label][name] else "invalid"
            kinds.setdefault(f"{kind} (it says {verdict})", []).append(example)
        for kind, names in sorted(kinds.items()):
            print(f"  {kind}: {len(names)}  e.g. {', '.join(names[:3])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
