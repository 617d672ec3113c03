"""One reading of references (compartments/references.py) for the code that decides access and
the code that stores compartments and the search index (issue 12): a foreign absolute URL never
counts as a local resource in either, a local absolute one counts in both."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from compartments.consent import consent_actors, read_consent
from compartments.engine import Facts
from compartments.facts import read_facts
from compartments.references import bases, local_reference, reference_of, split_reference
from fhir_server.search.fhirpath import split_reference as split_r4_reference
from fhir_server.search.index import index_rows
from fhir_server.search.membership import compartment_membership
from fhir_server.search.parameters import reference_targets

LOCAL = ("http://127.0.0.1:8080/fhir/",)
HERE = bases(LOCAL)
FOREIGN = "https://other.example/fhir/Patient/1"
LOCAL_ABSOLUTE = "http://127.0.0.1:8080/fhir/Patient/1"
NOW = datetime(2026, 6, 1, tzinfo=UTC)
GRANTEE = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "GRANTEE"}]}]  # fmt: skip


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Patient/1", ("Patient", "1")),
        ("Patient/1/_history/2", ("Patient", "1")),
        (LOCAL_ABSOLUTE, ("Patient", "1")),
        (LOCAL_ABSOLUTE + "/_history/4", ("Patient", "1")),
        (FOREIGN, None),
        ("https://other.example/fhir/Patient/1/_history/2", None),
        ("urn:uuid:6b4f1c4e-0c19-4a8e-bb0a-0a2b8d1f7c11", None),
        ("#contained", None),
        ("Patient?identifier=x", None),
        ("Patient/" + "a" * 65, None),
        ("/Patient/1", None),
    ],
)
def test_local_reference(reference: str, expected: tuple[str, str] | None) -> None:
    assert local_reference(reference, HERE) == expected
    assert reference_of({"reference": reference}, HERE) == (
        None if expected is None else "/".join(expected)
    )


def test_without_local_bases_no_absolute_reference_is_local() -> None:
    assert reference_of({"reference": LOCAL_ABSOLUTE}) is None
    assert reference_of({"reference": "Patient/1"}) == "Patient/1"
    assert reference_of("Patient/1") is None  # a Reference is a JSON object


def test_the_search_reading_is_the_same_one_for_r4_types() -> None:
    for reference in ("Patient/1", LOCAL_ABSOLUTE, FOREIGN, "Questionnaire/q|2.0", "Foo/1"):
        r4 = split_r4_reference(reference)
        any_type = split_reference(reference)
        assert r4 == (any_type if any_type is not None and any_type[1] != "Foo" else None)


def observation(subject: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": "o", "subject": {"reference": subject}}


def test_the_compartment_index_reads_a_foreign_url_as_no_local_resource() -> None:
    assert compartment_membership(observation(FOREIGN), local_bases=LOCAL) == []
    assert reference_targets([{"reference": FOREIGN}], local_bases=LOCAL) == []
    rows = index_rows(observation(FOREIGN), local_bases=LOCAL).reference
    assert all(row[1:3] != ("Patient", "1") for row in rows)
    assert any(row[3] == FOREIGN for row in rows)  # kept as the URL it is


def test_the_compartment_index_reads_a_local_url_as_the_local_resource() -> None:
    assert compartment_membership(observation(LOCAL_ABSOLUTE), local_bases=LOCAL) == ["Patient/1"]
    rows = index_rows(observation(LOCAL_ABSOLUTE), local_bases=LOCAL).reference
    assert any(row[1:3] == ("Patient", "1") for row in rows)


def related_person(patient: str) -> dict[str, Any]:
    return {
        "resourceType": "RelatedPerson",
        "id": "9",
        "patient": {"reference": patient},
        "relationship": [{"coding": [{"code": "MTH"}]}],
    }


def consent(patient: str, actor: str) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"code": "patient-privacy"}]},
        "patient": {"reference": patient},
        "provision": {
            "type": "permit",
            "actor": [{"role": GRANTEE, "reference": {"reference": actor}}],
        },
    }


def facts_of(patient: str, local_bases: frozenset[str]) -> Facts:
    rows = [
        ("RelatedPerson", "9", None, related_person(patient)),
        ("Consent", "3", None, consent(patient, "RelatedPerson/9")),
        (
            "CareTeam",
            "5",
            None,
            {
                "resourceType": "CareTeam",
                "subject": {"reference": patient},
                "participant": [{"member": {"reference": "Practitioner/7"}}],
            },
        ),
    ]
    _, _, facts, _ = read_facts("RelatedPerson/9", rows, Facts(now=NOW), local_bases)
    return facts


def test_the_access_facts_read_a_foreign_url_as_no_local_resource() -> None:
    facts = facts_of(FOREIGN, HERE)
    assert facts.related_persons["RelatedPerson/9"].patient == ""
    assert [c.patient for c in facts.consents] == [""]
    assert facts.care == {}


def test_the_access_facts_read_a_local_url_as_the_local_resource() -> None:
    facts = facts_of(LOCAL_ABSOLUTE, HERE)
    assert facts.related_persons["RelatedPerson/9"].patient == "Patient/1"
    assert [c.patient for c in facts.consents] == ["Patient/1"]
    assert facts.care == {"Practitioner/7": frozenset({"Patient/1"})}


def test_a_person_link_to_another_server_is_no_identity() -> None:
    person = {
        "resourceType": "Person",
        "link": [
            {"target": {"reference": "https://other.example/fhir/RelatedPerson/9"}},
            {"target": {"reference": "http://127.0.0.1:8080/fhir/Patient/2"}},
        ],
    }
    _, identities, _, _ = read_facts(
        "Person/4", [("Person", "4", None, person)], Facts(now=NOW), HERE
    )
    assert [i.reference for i in identities] == ["Patient/2"]


def test_one_consent_actor_reader() -> None:
    provision = {
        "type": "deny",
        "actor": [
            {"role": GRANTEE, "reference": {"reference": "RelatedPerson/1"}},
            {"reference": {"reference": "http://127.0.0.1:8080/fhir/Practitioner/2"}},
            {"reference": {"reference": "https://other.example/fhir/RelatedPerson/3"}},
            {"reference": {"display": "no reference"}},
            "not an actor",
        ],
        "provision": [
            {"type": "permit", "actor": [{"reference": {"reference": "RelatedPerson/4"}}]},
            {
                "type": "permit",
                "provision": [{"actor": [{"reference": {"reference": "Patient/5"}}]}],
            },
        ],
    }
    assert consent_actors(provision, HERE) == {
        "RelatedPerson/1",
        "Practitioner/2",
        "RelatedPerson/4",
        "Patient/5",
    }
    assert consent_actors(None) == frozenset()
    # read_consent reads the same actors (with their roles)
    read = read_consent("1", {**consent("Patient/1", "x"), "provision": provision}, HERE)
    assert read.root is not None
    named: set[str] = set()
    pending = [read.root]
    while pending:
        p = pending.pop()
        named |= (p.grantees or frozenset()) | p.others
        pending.extend(p.provisions)
    assert named == consent_actors(provision, HERE)
