"""The policy file: its schema, the messages for a bad file, and the default policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from capability.definitions import resource_types
from compartments.policy import (
    PolicyError,
    Reason,
    Rule,
    applicable,
    default_policy,
    load_policy,
)


def test_the_default_policy_loads_and_documents_every_rule() -> None:
    rules = default_policy(resource_types())
    assert len(rules) > 10
    assert all(rule.description for rule in rules)


def test_default_policy_denies_what_grants_access() -> None:
    rules = default_policy(resource_types())
    for role, entity in [
        ("RelatedPerson", "Person"),
        ("RelatedPerson", "RelatedPerson"),
        ("Patient", "RelatedPerson"),
        ("Practitioner", "Consent"),
        ("Practitioner", "Person"),
    ]:
        found = applicable(rules, role, entity, "update")
        assert any(rule.validator == "deny" for rule in found), (role, entity)
    assert {r.validator for r in applicable(rules, "RelatedPerson", "Immunization", "read")} == {
        "relatedperson_compartment"
    }
    assert applicable(rules, "Practitioner", "Observation", "delete")[0].validator == "deny"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"client_role": "Patient"}, "must be a list"),
        (
            [
                {
                    "client_role": "Nurse",
                    "entity_name": "Patient",
                    "operation": "read",
                    "validator": "allow",
                }
            ],
            "rule 1, field `client_role`",
        ),
        (
            [
                {
                    "client_role": "Patient",
                    "entity_name": "Patient",
                    "operation": "read",
                    "validator": "allow",
                },
                {
                    "client_role": "Patient",
                    "entity_name": "Patinet",
                    "operation": "read",
                    "validator": "allow",
                },
            ],
            "rule 2, field `entity_name`",
        ),
        (
            [{"client_role": "Patient", "entity_name": "Patient", "operation": "read"}],
            "rule 1: 'validator' is a required property",
        ),
        (
            [
                {
                    "client_role": "Patient",
                    "entity_name": "Patient",
                    "operation": "read",
                    "validator": "allow",
                    "extra": 1,
                }
            ],
            "rule 1: Additional properties",
        ),
        (
            [
                {
                    "client_role": "Patient",
                    "entity_name": "Patient",
                    "operation": "erase",
                    "validator": "allow",
                }
            ],
            "rule 1, field `operation`",
        ),
    ],
)
def test_a_bad_policy_names_the_rule_and_field(document: Any, message: str) -> None:
    with pytest.raises(PolicyError, match=message.replace("(", r"\(")):
        load_policy(document, resource_types())


def test_rule_matching_with_wildcards() -> None:
    rule = Rule("RelatedPerson", "*", "read", "relatedperson_compartment")
    assert rule.matches("RelatedPerson", "CarePlan", "read")
    assert not rule.matches("Patient", "CarePlan", "read")
    assert not rule.matches("RelatedPerson", "CarePlan", "create")


def test_reason_messages() -> None:
    assert Reason.INVALID_ROLE.message == "Invalid role"
    assert Reason.REFERENCE_MISMATCH.message == "Reference mismatch"
    assert Reason("consent_required") is Reason.CONSENT_REQUIRED


def test_a_bad_policy_file_stops_the_server_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from fhir_server import cli

    bad = tmp_path / "policy.json"
    bad.write_text(
        '[{"client_role": "Nurse", "entity_name": "Observation", "operation": "read",'
        ' "validator": "allow"}]'
    )
    monkeypatch.setenv("FHIR_POLICY_FILE", str(bad))
    monkeypatch.setenv("POSTGRES_URL", "postgresql://nobody@127.0.0.1:1/none")
    assert cli.main(["serve"]) == 2
    assert "rule 1, field `client_role`: 'Nurse' is not one of the allowed values" in caplog.text
