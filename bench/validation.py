"""Validation cost per resource: the server's compiled validator beside the official R4 JSON Schema
run by `jsonschema` (Python) and by `jsonschema-rs` (Rust) (`python -m bench.validation`).

Three figures per validator, in microseconds per resource: the median over the R4 examples in
tests/data/r4-examples (each example timed alone, best of several rounds), the mean over all of
them, and two typical resources (Patient-example, Observation-example). Before timing, the
findings are compared: accept/reject on every example, then on a seeded corpus of broken
variants made the way tests/unit/test_validation.py's differential test makes them (one element
of a small example replaced by another JSON value).

The schema validators check `#/definitions/<Type>` as the tests' oracle does: the schema's
`ResourceList` (a oneOf over every resource type, for contained and Bundle resources) is replaced
by `{"type": "object"}` ("schema, flat"), since the server's validator dispatches nested resources
by their own resourceType; `--full-schema` also times the untouched schema.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import re
import statistics
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import jsonschema

from bench.harness import per_call_us, r4_examples
from capability.definitions import json_schema
from fhir_server.validation import default_validator

TYPICAL = ("Patient-example", "Observation-example")

Check = Callable[[dict[str, Any]], bool]  # True when the resource is accepted


def _schema(resource_type: str, *, flat: bool) -> dict[str, Any]:
    definitions = dict(json_schema()["definitions"])
    if flat:
        definitions["ResourceList"] = {"type": "object"}
    # Medplum's own types in the file refer to definitions it lacks (`Resource`, `integer64`);
    # jsonschema-rs resolves every reference when it compiles, so it refuses the file unless they
    # exist (no R4 definition refers to them).
    for name in _dangling():
        definitions[name] = {}
    return {"$ref": f"#/definitions/{resource_type}", "definitions": definitions}


@cache
def _dangling() -> tuple[str, ...]:
    schema = json_schema()
    refs = set(re.findall(r'"#/definitions/([^"]+)"', json.dumps(schema)))
    return tuple(sorted(refs - set(schema["definitions"])))


def server() -> Check:
    validator = default_validator()
    validator.warm()
    return lambda resource: not validator.issues(resource)


def python_jsonschema(*, flat: bool) -> Check:
    @cache
    def for_type(resource_type: str) -> jsonschema.Draft6Validator:
        return jsonschema.Draft6Validator(_schema(resource_type, flat=flat))

    return lambda resource: for_type(resource["resourceType"]).is_valid(resource)


def rust_jsonschema(*, flat: bool) -> Check | None:
    try:
        import jsonschema_rs  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None

    @cache
    def for_type(resource_type: str) -> Any:
        return jsonschema_rs.Draft6Validator(_schema(resource_type, flat=flat))

    return lambda resource: bool(for_type(resource["resourceType"]).is_valid(resource))


def _objects(value: object) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _objects(item)
    elif isinstance(value, list):
        for item in value:
            yield from _objects(item)


REPLACEMENTS: tuple[object, ...] = (
    None, True, False, 0, -1, 1.5, 2**40, "", " ", "x", "2023-02-31", "male\n", [], [None],
    ["x"], {}, {"x": "y"}, {"url": "http://e.org"}, [{"text": "t"}],
)  # fmt: skip


def broken_variants(corpus: dict[str, dict[str, Any]], count: int, seed: int) -> list[Any]:
    """One element of a small example replaced by another JSON value, as in the tests."""
    rng = random.Random(seed)
    small = sorted(name for name, r in corpus.items() if len(json.dumps(r)) < 3000)
    variants = []
    while len(variants) < count:
        resource = copy.deepcopy(corpus[rng.choice(small)])
        holder = rng.choice(list(_objects(resource)))
        key = rng.choice(sorted(holder))
        if key == "resourceType":
            continue
        holder[key] = copy.deepcopy(rng.choice(REPLACEMENTS))
        variants.append(resource)
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget", type=float, default=0.05, help="seconds per round (default 0.05)"
    )
    parser.add_argument("--variants", type=int, default=2000, help="broken variants compared")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--full-schema", action="store_true", help="also time the oneOf schema")
    args = parser.parse_args()

    corpus = r4_examples()
    checks: dict[str, Check] = {"server (compiled)": server()}
    checks["jsonschema, schema flat"] = python_jsonschema(flat=True)
    rust = rust_jsonschema(flat=True)
    if rust is not None:
        checks["jsonschema-rs, schema flat"] = rust
    if args.full_schema:
        checks["jsonschema, full schema"] = python_jsonschema(flat=False)
        rust_full = rust_jsonschema(flat=False)
        if rust_full is not None:
            checks["jsonschema-rs, full schema"] = rust_full

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {len(corpus)} examples")  # fmt: skip
    print("\nfindings (accepted / rejected):")
    for name, check in checks.items():
        rejected = sorted(example for example, r in corpus.items() if not check(r))
        print(f"  {name:28} examples: {len(corpus) - len(rejected)} / {len(rejected)} {rejected}")
    variants = broken_variants(corpus, args.variants, args.seed)
    verdicts = {name: [check(v) for v in variants] for name, check in checks.items()}
    for name, accepted in verdicts.items():
        print(f"  {name:28} {len(variants)} broken variants: {sum(accepted)} / "
              f"{len(variants) - sum(accepted)}")  # fmt: skip
    reference = verdicts["jsonschema, schema flat"]
    for name, accepted in verdicts.items():
        laxer = sum(a and not r for a, r in zip(accepted, reference, strict=True))
        stricter = sum(r and not a for a, r in zip(accepted, reference, strict=True))
        print(
            f"  {name:28} vs jsonschema: accepts {laxer} it rejects, rejects {stricter} it accepts"
        )

    print("\nmicroseconds per resource (best of 5 rounds):")
    print(f"  {'validator':28} {'median':>8} {'mean':>8} " + " ".join(f"{t:>20}" for t in TYPICAL))
    for name, check in checks.items():
        times = {example: per_call_us(check, r, args.budget) for example, r in corpus.items()}
        typical = " ".join(f"{times[t]:>20.1f}" for t in TYPICAL)
        print(f"  {name:28} {statistics.median(times.values()):>8.1f} "
              f"{statistics.fmean(times.values()):>8.1f} {typical}")  # fmt: skip


if __name__ == "__main__":
    main()
