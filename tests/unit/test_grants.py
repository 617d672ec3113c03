"""Grants as values (issue 12): the services compute `Guard.grants(operation, types)` for the
types a statement needs and hand them to storage, which never calls back into the Guard."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from capability.definitions import resource_types
from compartments.engine import Identity
from compartments.policy import Policy, default_policy
from fhir_server.auth.tokens import principal_from_claims
from fhir_server.search.grants import UNRESTRICTED, Everything, Grant, InCompartments
from fhir_server.search.query import parse_search
from fhir_server.services.access.guard import Guard
from fhir_server.services.context import nobody, server_guard
from fhir_server.storage.search_sql import (
    count_statement,
    include_statement,
    include_types,
    search_statement,
    search_types,
)
from tests.unit.test_layers import ROOT

NOW = datetime(2026, 1, 1, tzinfo=UTC)

QUERIES = [
    ("Observation", [("code", "x")]),
    ("Observation", [("subject:Patient.name", "ann")]),
    ("Observation", [("subject.general-practitioner:Practitioner.name", "bo")]),
    ("Patient", [("_has:Observation:patient:code", "8867-4")]),
    ("Patient", [("_has:Observation:patient:_has:Provenance:target:agent", "Practitioner/1")]),
    ("AuditEvent", [("patient", "Patient/1"), ("date", "ge2026-01"), ("_sort", "-date")]),
    ("Observation", [("code-value-quantity", "http://loinc.org|8480-6$gt100")]),
    ("Observation", [("patient", "Patient/1"), ("_include", "Observation:encounter")]),
    ("Observation", [("_include", "*")]),
    ("Patient", [("_revinclude", "Observation:subject")]),
    ("Observation", [("_include", "Observation:subject:Patient")]),
]


def parent() -> Guard:
    facts_free = server_guard().facts
    principal = principal_from_claims(
        {"sub": "RelatedPerson/9", "fhirUser": "RelatedPerson/9", "scope": "user/*.rs"}
    )
    policy = Policy(default_policy(resource_types()))
    return Guard(principal, "RelatedPerson/9", (Identity("RelatedPerson/9"),), facts_free, policy)


@pytest.mark.parametrize(("resource_type", "params"), QUERIES)
def test_the_named_types_are_every_grant_a_statement_needs(
    resource_type: str, params: list[tuple[str, str]]
) -> None:
    query = parse_search((resource_type,), params)
    for guard in (server_guard(), nobody(), parent()):
        grants = guard.grants("search", search_types(query))
        assert set(grants) == set(search_types(query))
        search_statement(query, grants, now=NOW)
        count_statement(query, grants, now=NOW)
        for include in query.includes:
            include_statement(
                include, [("Observation", "1")], guard.grants("search", include_types(include))
            )


def test_a_grant_not_computed_is_refused_not_shown() -> None:
    query = parse_search(("Observation",), [("subject:Patient.name", "ann")])
    assert search_types(query) == {"Observation", "Patient"}
    with pytest.raises(LookupError, match="Patient"):
        search_statement(query, {"Observation": UNRESTRICTED}, now=NOW)


def test_the_guards_grants_are_its_decisions() -> None:
    guard = parent()
    grants = guard.grants("search", ("Observation", "Patient"))
    assert grants == {t: guard.grant("search", t) for t in ("Observation", "Patient")}
    assert set(server_guard().grants("read")) == set(resource_types())
    assert all(g is None for g in nobody().grants("read").values())
    assert all(g == UNRESTRICTED for g in server_guard().grants("read").values())


def test_fixed_grants_hold_every_type_and_are_never_empty() -> None:
    only = InCompartments(frozenset({"Patient/1"}), "Person/2")
    assert only["Observation"] == Grant(
        compartments=frozenset({"Patient/1"}), creators=frozenset({"Person/2"})
    )
    assert Everything()["Anything"] == UNRESTRICTED
    assert bool(only) and bool(Everything())


def test_storage_asks_the_guard_nothing() -> None:
    storage = ROOT / "fhir_server" / "storage"
    for path in storage.rglob("*.py"):
        text = path.read_text()
        assert "Guard" not in text, path
        assert ".grant(" not in text, path
