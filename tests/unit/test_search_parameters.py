"""The SearchParameter registry: per-type parameters, restricted expressions, references."""

from __future__ import annotations

from typing import Any

import pytest

from capability.definitions import resource_types, search_parameter_bundle
from fhir_server.search.parameters import (
    MODIFIERS,
    UNSUPPORTED_EXPRESSIONS,
    SearchParam,
    extract_values,
    reference_targets,
    search_params,
)

LOCAL = ("http://127.0.0.1:8080/fhir",)


def test_every_r4_type_has_its_parameters() -> None:
    definitions = [e["resource"] for e in search_parameter_bundle()["entry"]]
    for resource_type in resource_types():
        params = search_params(resource_type)
        expected = {
            d["code"]
            for d in definitions
            if resource_type in d["base"]
            or "Resource" in d["base"]
            or (
                "DomainResource" in d["base"]
                and resource_type not in ("Bundle", "Binary", "Parameters")
            )
        }
        assert set(params) == expected, resource_type
        for code, param in params.items():
            assert param.code == code
            assert param.resource_type == resource_type
            has_expression = param.expression is not None
            assert (param.accessor is not None) == (
                has_expression and param.id not in UNSUPPORTED_EXPRESSIONS
            )


def test_common_parameters_apply_to_every_type() -> None:
    bundle = search_params("Bundle")
    assert {"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"} <= set(bundle)
    assert "_text" not in bundle  # a DomainResource parameter; Bundle is not one
    assert search_params("Patient")["_text"].accessor is None
    patient = {"resourceType": "Patient", "id": "p", "meta": {"lastUpdated": "2024-01-01T00:00Z"}}
    assert extract_values(patient, search_params("Patient")["_id"]) == ["p"]
    assert extract_values(patient, search_params("Patient")["_lastUpdated"]) == [
        "2024-01-01T00:00Z"
    ]
    assert extract_values(patient, search_params("Patient")["_text"]) == []


def test_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="`Foo`"):
        search_params("Foo")


def test_shared_expression_is_restricted_to_the_base() -> None:
    patient_param = search_params("Observation")["patient"]
    assert patient_param.id == "clinical-patient"
    assert patient_param.expression == "Observation.subject.where(resolve() is Patient)"
    assert patient_param.targets == ("Patient",)
    care_plan = search_params("CarePlan")["patient"]
    assert care_plan.expression == "CarePlan.subject.where(resolve() is Patient)"
    name = search_params("Practitioner")["name"]
    assert "Patient" not in (name.expression or "")


def test_observation_parameters() -> None:
    params = search_params("Observation")
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        "subject": {"reference": "Group/g"},
        "effectivePeriod": {"start": "2024-01-01"},
        "valueQuantity": {"value": 120, "code": "mm[Hg]"},
        "performer": [{"reference": "RelatedPerson/9"}],
    }
    assert extract_values(observation, params["date"]) == [{"start": "2024-01-01"}]
    assert extract_values(observation, params["value-quantity"]) == [
        {"value": 120, "code": "mm[Hg]"}
    ]
    assert extract_values(observation, params["value-concept"]) == []
    assert extract_values(observation, params["subject"]) == [{"reference": "Group/g"}]
    assert extract_values(observation, params["patient"]) == []
    assert extract_values(observation, params["status"]) == ["final"]
    assert params["value-quantity"].comparators == (
        "eq", "ne", "gt", "ge", "lt", "le", "sa", "eb", "ap",
    )  # fmt: skip
    assert params["subject"].modifiers == MODIFIERS["reference"]
    assert params["code"].modifiers == MODIFIERS["token"]
    assert "exact" in search_params("Patient")["family"].modifiers


def test_composite_parameters_have_typed_components() -> None:
    combo = search_params("Observation")["combo-code-value-quantity"]
    assert combo.type == "composite"
    assert combo.multiple_or is False
    assert [(c.code, c.type) for c in combo.components] == [
        ("combo-code", "token"),
        ("combo-value-quantity", "quantity"),
    ]
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "code": {"text": "bp"},
        "component": [
            {"code": {"text": "sys"}, "valueQuantity": {"value": 120}},
            {"code": {"text": "dia"}, "valueQuantity": {"value": 80}},
        ],
    }
    pairs = [
        tuple(c.accessor(node, observation) for c in combo.components)
        for node in extract_values(observation, combo)
    ]
    assert pairs == [
        ([{"text": "bp"}], []),
        ([{"text": "sys"}], [{"value": 120}]),
        ([{"text": "dia"}], [{"value": 80}]),
    ]
    value_date = search_params("Observation")["code-value-date"]
    dated = {"resourceType": "Observation", "code": {"text": "c"}, "valueDateTime": "2024"}
    (node,) = extract_values(dated, value_date)
    assert value_date.components[1].accessor(node, dated) == ["2024"]


def test_insurance_plan_name_is_relative_in_r4() -> None:
    name = search_params("InsurancePlan")["name"]
    assert name.expression == "name | alias"
    plan = {"resourceType": "InsurancePlan", "name": "Gold", "alias": ["G1"]}
    assert extract_values(plan, name) == ["Gold", "G1"]


def test_search_param_is_a_frozen_value() -> None:
    param = search_params("Patient")["gender"]
    assert isinstance(param, SearchParam)
    with pytest.raises(AttributeError):
        param.code = "sex"  # type: ignore[misc]
    assert search_params("Patient") is search_params("Patient")


# ------------------------------------------------------------------------------------------
# reference_targets


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"reference": "Patient/1"}, [("Patient", "1")]),
        ({"reference": "Patient/1/_history/4"}, [("Patient", "1")]),
        ({"reference": "http://127.0.0.1:8080/fhir/Patient/1"}, [("Patient", "1")]),
        ({"reference": "http://127.0.0.1:8080/fhir/Patient/1/_history/2"}, [("Patient", "1")]),
        ({"reference": "https://elsewhere.example/fhir/Patient/1"}, []),
        ({"reference": "http://127.0.0.1:8080/other/Patient/1"}, []),
        ({"reference": "#p1"}, []),
        ({"reference": "urn:uuid:6b4f1c4e-0c19-4a8e-bb0a-0a2b8d1f7c11"}, []),
        ({"reference": "urn:oid:1.2.3.4"}, []),
        ({"identifier": {"system": "s", "value": "v"}, "type": "Patient"}, []),
        ({"reference": "Patient?identifier=s|v"}, []),
        ({"reference": "Unknown/1"}, []),
        ({"reference": "Patient/has space"}, []),
        ({"reference": "Patient/" + "x" * 65}, []),
        ({"reference": "x/Patient/1"}, []),
        ({"reference": 7}, []),
        ("Questionnaire/q1", [("Questionnaire", "q1")]),
        ("http://127.0.0.1:8080/fhir/Questionnaire/q1|2.0", [("Questionnaire", "q1")]),
        ("http://hl7.org/fhir/Questionnaire/q1", []),
        (None, []),
    ],
)
def test_reference_targets(value: Any, expected: list[tuple[str, str]]) -> None:
    assert reference_targets([value], local_bases=LOCAL) == expected


def test_reference_targets_dedupes_in_order_and_normalizes_bases() -> None:
    refs = [
        {"reference": "Practitioner/2"},
        {"reference": "Patient/1"},
        {"reference": "http://h/fhir/Practitioner/2"},
    ]
    assert reference_targets(refs, local_bases=["http://h/fhir/"]) == [
        ("Practitioner", "2"),
        ("Patient", "1"),
    ]
    assert reference_targets(refs) == [("Practitioner", "2"), ("Patient", "1")]
