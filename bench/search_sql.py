"""Building the SQL of a search, alone: microseconds per search (`python -m bench.search_sql`).

Times what a search request spends before its first round trip to PostgreSQL: from the parsed
`SearchQuery` and the caller's grants to the SQL text and its bound values, exactly as
`services/interactions/search.py` gets them (`Guard.grants` + `search_statement`), for a
representative set of searches and callers. No database: the grants come from real `Guard`s built
with the default policy and in-memory facts, as `services/access/guard.py` builds them for a
request.

`--profile` runs the same loop under py-spy (`pip install py-spy` into the venv) and writes
collapsed stacks to bench/results/profile-search-sql.txt. `--cold` also times each search with an
empty statement cache (what the first request of a new query shape pays).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import timeit
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from bench.engine import family_facts
from capability.definitions import resource_types
from compartments.engine import Identity
from compartments.policy import Policy, default_policy
from fhir_server.auth.tokens import principal_from_claims
from fhir_server.search.query import SearchQuery, parse_search
from fhir_server.services.access.guard import Guard
from fhir_server.services.context import server_guard
from fhir_server.storage import search_sql
from fhir_server.storage.search_sql import (
    include_statement,
    include_types,
    search_statement,
    search_types,
)
from fhir_server.storage.sql import compile_query

RESULTS = os.path.join(os.path.dirname(__file__), "results")
BASES = ("http://localhost:8080/fhir",)


def guards() -> dict[str, Guard]:
    """System (unrestricted), a parent (RelatedPerson of a minor, `user/*.rs`), a spouse with a
    LAB_RESULTS Consent, and a patient with `patient/*.rs` and its launch context."""
    policy = Policy(default_policy(resource_types()))
    facts = family_facts()

    def guard(user: str, scope: str, patient: str | None = None) -> Guard:
        claims: dict[str, Any] = {"sub": user, "fhirUser": user, "scope": scope}
        if patient:
            claims["patient"] = patient
        principal = principal_from_claims(claims)
        return Guard(principal, user, (Identity(user),), facts, policy)

    return {
        "System": server_guard(),
        "parent": guard("RelatedPerson/9", "user/*.rs"),
        "spouse": guard("RelatedPerson/8", "user/*.rs"),
        "patient": guard("Patient/a", "patient/*.rs", patient="a"),
    }


# (name, type, params, caller)
CASES: list[tuple[str, str, list[tuple[str, str]], str]] = [
    ("Patient?family=", "Patient", [("family", "smi")], "System"),
    (
        "Patient?family:exact= (/api/v1 family_name)",
        "Patient",
        [("family:exact", "Smith")],
        "System",
    ),
    (
        "Patient?name=&birthdate=",
        "Patient",
        [("name", "ann"), ("birthdate", "1980-05-17")],
        "System",
    ),
    (
        "Patient?identifier=system\\|value",
        "Patient",
        [("identifier", "http://hospital.example.org/mrn|MRN0001")],
        "System",
    ),
    (
        "Observation?patient=&code=&date=ge",
        "Observation",
        [
            ("patient", "Patient/c"),
            ("code", "http://loinc.org|8867-4"),
            ("date", "ge2020-01-01"),
        ],
        "System",
    ),
    (
        "Observation?patient=&date=ge&_sort=-date",
        "Observation",
        [("patient", "Patient/c"), ("date", "ge2020-01-01"), ("_sort", "-date")],
        "System",
    ),
    (
        "Observation?patient=&_include=Observation:encounter",
        "Observation",
        [("patient", "Patient/c"), ("_include", "Observation:encounter")],
        "System",
    ),
    (
        "Observation?subject:Patient.name= (chain)",
        "Observation",
        [("subject:Patient.name", "ann")],
        "System",
    ),
    (
        "Patient?_has:Observation:patient:code=",
        "Patient",
        [("_has:Observation:patient:code", "8867-4")],
        "System",
    ),
    (
        "Observation?code=a,b,c (3 ORed values)",
        "Observation",
        [("code", "http://loinc.org|1,http://loinc.org|2,http://loinc.org|3")],
        "System",
    ),
    (
        "Observation?patient=&code= as parent",
        "Observation",
        [("patient", "Patient/c"), ("code", "http://loinc.org|8867-4")],
        "parent",
    ),
    (
        "Observation?patient=&date=ge&_sort=-date as spouse (Consent)",
        "Observation",
        [("patient", "Patient/a"), ("date", "ge2020-01-01"), ("_sort", "-date")],
        "spouse",
    ),
    (
        "Observation?patient=&_include=Observation:encounter as parent",
        "Observation",
        [("patient", "Patient/c"), ("_include", "Observation:encounter")],
        "parent",
    ),
    (
        "Patient?_has:Observation:patient:code= as parent",
        "Patient",
        [("_has:Observation:patient:code", "8867-4")],
        "parent",
    ),
    (
        "Observation?code= as patient (patient/*.rs)",
        "Observation",
        [("code", "http://loinc.org|8867-4")],
        "patient",
    ),
]

# The page of the `_include` cases: 20 Observations
PAGE = [("Observation", f"{i:032x}") for i in range(20)]


def build(query: SearchQuery, guard: Guard) -> tuple[str, Any]:
    """The SQL text and values of one search, as services/interactions/search.py gets them."""
    grants = guard.grants("search", search_types(query))
    statement, _ = search_statement(query, grants, local_bases=BASES, now=datetime.now(UTC))
    return _sql(statement)


def build_includes(query: SearchQuery, guard: Guard) -> list[tuple[str, Any]]:
    return [
        _sql(include_statement(i, PAGE, guard.grants("search", include_types(i))))
        for i in query.includes
    ]


def _sql(statement: Any) -> tuple[str, Any]:
    # a `Query` (SQL cached per shape) or, before that existed, a statement compiled per search
    if isinstance(getattr(statement, "sql", None), str):
        return statement.sql, statement.params
    return compile_query(statement)


def cases() -> list[tuple[str, Callable[[], object]]]:
    callers = guards()
    found: list[tuple[str, Callable[[], object]]] = []
    for name, resource_type, params, caller in CASES:
        query = parse_search((resource_type,), params)
        guard = callers[caller]
        found.append((name, partial(build, query, guard)))
        if query.includes:
            found.append(("  its _include, page of 20", partial(build_includes, query, guard)))
    return found


def _clear_cache() -> None:
    clear = getattr(search_sql, "clear_statement_cache", None)
    if clear is not None:
        clear()


def measure(repeat: int, number: int, cold: bool) -> None:
    print("| search | µs per search (warm) |" + (" µs, empty cache |" if cold else ""))
    print("|---|--:|" + ("--:|" if cold else ""))
    total = 0.0
    for name, run in cases():
        run()  # parse-time caches, imports
        seconds = min(timeit.repeat(run, number=number, repeat=repeat)) / number
        total += seconds
        line = f"| {name} | {seconds * 1e6:.0f} |"
        if cold:

            def first(run: Callable[[], object] = run) -> None:
                _clear_cache()
                run()

            line += f" {min(timeit.repeat(first, number=number // 4 or 1, repeat=repeat)) / (number // 4 or 1) * 1e6:.0f} |"
        print(line)
    print(f"\nsum of the warm figures: {total * 1e6:.0f} µs")


def profile(seconds: float) -> None:
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    os.makedirs(RESULTS, exist_ok=True)
    output = os.path.join(RESULTS, "profile-search-sql.txt")
    command = [sys.executable, "-m", "bench.search_sql", "--loop", str(seconds)]
    subprocess.run(
        [spy, "record", "--format", "raw", "--rate", "500", "-o", output, "--", *command],
        check=True,
    )
    print(f"collapsed stacks: {output}")


def loop(seconds: float) -> None:
    import time

    runs = [run for _, run in cases()]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for run in runs:
            run()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.search_sql", description=__doc__.splitlines()[0]
    )
    p.add_argument("--number", type=int, default=400, help="calls per timing (%(default)s)")
    p.add_argument(
        "--repeat", type=int, default=5, help="timings per search, best kept (%(default)s)"
    )
    p.add_argument("--cold", action="store_true", help="also time with an empty statement cache")
    p.add_argument("--profile", type=float, metavar="SECONDS", help="py-spy the loop this long")
    p.add_argument("--loop", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.loop:
        loop(args.loop)
    elif args.profile:
        profile(args.profile)
    else:
        measure(args.repeat, args.number, args.cold)


if __name__ == "__main__":
    main()
