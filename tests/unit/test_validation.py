"""R4 resource validation: official examples pass, every broken variant is reported where it is."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from capability.definitions import json_schema, resource_types
from fhir_server.api.errors import status_of
from fhir_server.errors import InvalidResource, Issue
from fhir_server.validation import (
    MAX_ISSUES,
    ResourceValidator,
    default_validator,
    resource_type_of,
)
from tests.support.resources import patient

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "data" / "r4-examples"
EXAMPLE_FILES = sorted(EXAMPLES_DIR.glob("*.json"))

VALIDATOR = ResourceValidator()


def load(name: str) -> dict[str, Any]:
    with (EXAMPLES_DIR / f"{name}.json").open(encoding="utf-8") as f:
        resource: dict[str, Any] = json.load(f)
    return resource


@cache
def _examples() -> dict[str, dict[str, Any]]:
    return {path.stem: load(path.stem) for path in EXAMPLE_FILES}


def problems(resource: object, **kwargs: Any) -> list[tuple[str, str, tuple[str, ...]]]:
    """The issues of ``resource`` as (code, diagnostics, expression), after checking that
    validate() raises exactly when issues() finds something."""
    found = VALIDATOR.issues(resource, **kwargs)
    if found:
        with pytest.raises(InvalidResource) as raised:
            VALIDATOR.validate(resource, **kwargs)
        assert list(raised.value.issues) == found
        assert status_of(raised.value) == 400
    else:
        VALIDATOR.validate(resource, **kwargs)
    return [(issue.code, issue.diagnostics, issue.expression) for issue in found]


def observation(**elements: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "weight"},
        **elements,
    }


# --- the official examples


def test_the_example_set_covers_the_types_the_server_cares_about() -> None:
    types = {path.stem.split("-", 1)[0] for path in EXAMPLE_FILES}
    assert len(EXAMPLE_FILES) >= 30
    assert {
        "Patient", "RelatedPerson", "Person", "Consent", "Observation", "Condition", "Encounter",
        "MedicationRequest", "Immunization", "Appointment", "CarePlan", "CareTeam", "Coverage",
        "AllergyIntolerance", "DiagnosticReport", "Procedure", "ServiceRequest", "Practitioner",
        "PractitionerRole", "Organization", "Location", "Questionnaire", "QuestionnaireResponse",
        "Device", "DocumentReference", "Goal", "Medication", "Schedule", "Slot", "AuditEvent",
        "Provenance", "Bundle",
    } <= types  # fmt: skip
    assert any(
        example["resourceType"] == "Bundle" and example["type"] == "transaction"
        for example in _examples().values()
    )


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.stem)
def test_every_official_example_is_valid(path: Path) -> None:
    resource = load(path.stem)
    resource_type, _, resource_id = path.stem.partition("-")
    assert (resource["resourceType"], resource["id"]) == (resource_type, resource_id)
    assert problems(resource) == []
    assert problems(resource, expected_type=resource_type) == []


def test_examples_are_not_changed_by_validation() -> None:
    resource = load("Bundle-bundle-transaction")
    before = copy.deepcopy(resource)
    VALIDATOR.validate(resource)
    assert resource == before


# --- unknown elements


def test_unknown_element_at_the_top_level() -> None:
    resource = load("Patient-example")
    resource["foo"] = "bar"
    assert problems(resource) == [("structure", "unknown element `foo`", ("Patient.foo",))]


def test_unknown_element_nested_in_arrays() -> None:
    resource = load("Patient-example")
    resource["name"][0]["foo"] = {"deep": True}
    resource["contact"][0]["name"]["_family"]["bar"] = 1
    assert problems(resource) == [
        ("structure", "unknown element `foo`", ("Patient.name[0].foo",)),
        ("structure", "unknown element `bar`", ("Patient.contact[0].name._family.bar",)),
    ]


def test_unknown_element_is_reported_whatever_its_value() -> None:
    for value in (None, "", [], {}, 0, [None], {"a": None}):
        assert problems(patient(foo=value)) == [
            ("structure", "unknown element `foo`", ("Patient.foo",))
        ]


def test_choice_element_with_a_type_it_does_not_allow_is_unknown() -> None:
    # Observation.value[x] has no Money type.
    resource = observation(valueMoney={"value": 1})
    assert problems(resource) == [
        ("structure", "unknown element `valueMoney`", ("Observation.valueMoney",))
    ]


def test_elements_the_redistributed_schema_adds_to_r4_are_unknown() -> None:
    resource = patient(
        meta={"project": "p1", "author": {"reference": "Practitioner/1"}},
        managingOrganization={"reference": "Organization/1", "resource": {"x": 1}},
    )
    assert problems(resource) == [
        ("structure", "unknown element `project`", ("Patient.meta.project",)),
        ("structure", "unknown element `author`", ("Patient.meta.author",)),
        ("structure", "unknown element `resource`", ("Patient.managingOrganization.resource",)),
    ]
    outcome = {
        "resourceType": "OperationOutcome",
        "status": "ok",
        "issue": [{"severity": "error", "code": "invalid"}],
    }
    assert problems(outcome) == [
        ("structure", "unknown element `status`", ("OperationOutcome.status",))
    ]


# --- JSON types


def test_wrong_primitive_types() -> None:
    resource = patient(
        active="true",
        gender=["male"],
        birthDate=19741225,
        multipleBirthInteger=True,
        name=[{"given": [1]}],
    )
    assert problems(resource) == [
        ("structure", "`active` must be a boolean, not a string", ("Patient.active",)),
        ("structure", "`gender` must be a string (a code), not an array", ("Patient.gender",)),
        ("structure", "`birthDate` must be a string, not an integer", ("Patient.birthDate",)),
        (
            "structure",
            "`multipleBirthInteger` must be an integer (a number without fraction or exponent), "
            "not a boolean",
            ("Patient.multipleBirthInteger",),
        ),
        ("structure", "`given` must be a string, not an integer", ("Patient.name[0].given[0]",)),
    ]


def test_complex_elements_must_be_objects_and_repeating_ones_arrays() -> None:
    # The R4 schema's complex definitions have no "type": "object", so it lets these through.
    resource = patient(
        managingOrganization="Organization/1",
        name={"family": "Chalmers"},
        maritalStatus=[{"text": "married"}],
        telecom=["555-1234"],
    )
    assert problems(resource) == [
        (
            "structure",
            "`managingOrganization` must be an object, not a string",
            ("Patient.managingOrganization",),
        ),
        ("structure", "`name` must be an array, not an object", ("Patient.name",)),
        (
            "structure",
            "`maritalStatus` must be an object, not an array",
            ("Patient.maritalStatus",),
        ),
        ("structure", "`telecom` must be an object, not a string", ("Patient.telecom[0]",)),
    ]


def test_numbers() -> None:
    def quantity(value: object) -> dict[str, Any]:
        return observation(valueQuantity={"value": value, "unit": "kg"})

    assert problems(quantity(72)) == []
    assert problems(quantity(72.5)) == []
    assert problems(quantity(-1e-3)) == []
    path = ("Observation.valueQuantity.value",)
    assert problems(quantity(True)) == [
        ("structure", "`value` must be a number, not a boolean", path)
    ]
    assert problems(quantity("72")) == [
        ("structure", "`value` must be a number, not a string", path)
    ]
    assert problems(quantity(float("nan"))) == [("value", "`value` must be a finite number", path)]

    def rank(value: object) -> dict[str, Any]:
        return patient(telecom=[{"system": "phone", "value": "555", "rank": value}])

    assert problems(rank(1)) == []
    assert problems(rank(2**31 - 1)) == []
    where = ("Patient.telecom[0].rank",)
    assert problems(rank(0)) == [
        ("value", "`rank` must be a positiveInt from 1 to 2147483647, not 0", where)
    ]
    assert problems(rank(2**31))[0][2] == where
    assert problems(rank(1.0))[0][:1] == ("structure",)
    assert problems(rank(False))[0][2] == where


# --- primitive formats, codes, constants


def test_bad_dates() -> None:
    assert problems(patient(birthDate="1974-12-25")) == []
    assert problems(patient(birthDate="1974-12")) == []
    assert problems(patient(birthDate="2024-02-29")) == []
    assert problems(patient(birthDate="1974-13-01")) == [
        (
            "value",
            "`birthDate` does not match the date format: `1974-13-01`",
            ("Patient.birthDate",),
        )
    ]
    assert problems(patient(birthDate="2023-02-29")) == [
        ("value", "`birthDate` is not a real calendar date: `2023-02-29`", ("Patient.birthDate",))
    ]
    assert problems(patient(birthDate="25/12/1974"))[0][1].startswith(
        "`birthDate` does not match the date format"
    )
    # A time needs a zone in dateTime and instant.
    assert problems(patient(deceasedDateTime="2020-01-01T10:00:00+01:00")) == []
    assert problems(patient(deceasedDateTime="2020-01-01T10:00:00")) == [
        (
            "value",
            "`deceasedDateTime` does not match the dateTime format: `2020-01-01T10:00:00`",
            ("Patient.deceasedDateTime",),
        )
    ]
    assert problems(patient(meta={"lastUpdated": "2020-01-01"}))[0][1].startswith(
        "`lastUpdated` does not match the instant format"
    )


def test_other_formats() -> None:
    assert problems(patient(id="a" * 64)) == []
    assert problems(patient(id="a" * 65))[0][:1] == ("value",)
    assert problems(patient(id="has space"))[0][1].startswith("`id` does not match the id format")
    # A code has no leading, trailing or double whitespace; "$" does not let a final newline in.
    bad_codes = ["a  b", " a", "a ", "a\n"]
    for code in bad_codes:
        found = problems(patient(language=code))
        assert [(c, path) for c, _, path in found] == [("value", ("Patient.language",))]
    assert problems(patient(implicitRules="http://example.org/a b"))[0][2] == (
        "Patient.implicitRules",
    )
    # A no-break space is not whitespace to FHIR (the HL7 validator reads \s as ASCII).
    assert problems(patient(name=[{"text": "Dr.\u00a0Who"}])) == []


def test_base64_is_checked_and_cheap_on_long_bad_values() -> None:
    good = "QUJD\nREVG\n" * 20_000
    binary = {"resourceType": "Binary", "contentType": "text/plain", "data": good}
    assert problems(binary) == []
    binary["data"] = good + "!"
    # The schema's own base64 pattern backtracks exponentially on this; the rewrite is linear.
    assert problems(binary) == [
        (
            "value",
            "`data` does not match the base64Binary format: `" + "QUJD\\nREVG\\n" * 6 + "Q...`",
            ("Binary.data",),
        )
    ]
    binary["data"] = "QUJ"
    assert problems(binary)[0][1] == "`data` does not match the base64Binary format: `QUJ`"


def test_bad_enum_code() -> None:
    assert problems(patient(gender="mail")) == [
        (
            "value",
            "`gender` has the value `mail`, which is not one of `male`, `female`, `other`, "
            "`unknown`",
            ("Patient.gender",),
        )
    ]
    assert problems(observation(status="done"))[0][2] == ("Observation.status",)


def test_resource_type_constant_inside_a_resource() -> None:
    # A nested Bundle's resourceType is dispatched on, so its definition's const always holds;
    # the constant is still checked when a body is checked as another type.
    found = problems({"resourceType": 3, "gender": "male"}, expected_type="Patient")
    assert found == [
        ("structure", "`resourceType` must be a string, not an integer", ("Patient.resourceType",))
    ]


# --- required elements


def test_missing_required_elements() -> None:
    resource = observation()
    del resource["status"], resource["code"]
    assert problems(resource) == [
        ("required", "missing required element `code`", ("Observation.code",)),
        ("required", "missing required element `status`", ("Observation.status",)),
    ]


def test_a_required_primitive_may_be_sent_as_its_extension_only() -> None:
    resource = observation()
    del resource["status"]
    resource["_status"] = {
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                "valueCode": "unknown",
            }
        ]
    }
    assert problems(resource) == []


def test_missing_required_nested_and_choice_elements() -> None:
    task: dict[str, Any] = {
        "resourceType": "Task",
        "status": "draft",
        "intent": "order",
        "input": [{"type": {"text": "dose"}}],
        "extension": [{"valueString": "no url"}],
    }
    assert problems(task) == [
        ("required", "missing required element `value[x]`", ("Task.input[0].value[x]",)),
        ("required", "missing required element `url`", ("Task.extension[0].url",)),
    ]
    task["input"][0]["valueString"] = "5 mg"
    task["extension"][0]["url"] = "http://example.org/x"
    assert problems(task) == []


def test_a_choice_element_takes_one_type() -> None:
    resource = observation(valueString="heavy", valueQuantity={"value": 90})
    assert problems(resource) == [
        (
            "structure",
            "`valueString` and `valueQuantity` are both values of `value[x]`, which takes only one",
            ("Observation.valueString",),
        )
    ]
    # A value and the extensions of that same value are one choice.
    resource = observation(valueString="heavy", _valueString={"id": "v"})
    assert problems(resource) == []
    resource = observation(effectiveDateTime="2020-01-01", valueString="heavy")
    assert problems(resource) == []


# --- null, empty values, primitive arrays


def test_nulls_are_rejected() -> None:
    resource = patient(birthDate=None, name=[None], address=[{"line": None}], _gender=None)
    assert problems(resource) == [
        ("structure", "`birthDate` must not be null", ("Patient.birthDate",)),
        ("structure", "`name` must not be null", ("Patient.name[0]",)),
        ("structure", "`line` must not be null", ("Patient.address[0].line",)),
        ("structure", "`_gender` must not be null", ("Patient._gender",)),
    ]


def test_empty_strings_arrays_and_objects_are_rejected() -> None:
    resource = patient(
        gender="",
        name=[{"family": "", "given": []}],
        telecom=[{}],
        maritalStatus={"coding": [{"code": ""}]},
        text={"status": "generated", "div": ""},
    )
    assert problems(resource) == [
        ("value", "`gender` must not be an empty string", ("Patient.gender",)),
        ("value", "`family` must not be an empty string", ("Patient.name[0].family",)),
        ("structure", "`given` must not be an empty array", ("Patient.name[0].given",)),
        ("structure", "`telecom` must not be an empty object", ("Patient.telecom[0]",)),
        ("value", "`code` must not be an empty string", ("Patient.maritalStatus.coding[0].code",)),
        ("value", "`div` must not be an empty string", ("Patient.text.div",)),
    ]


def test_primitive_arrays_may_align_with_their_extensions_through_nulls() -> None:
    extension = {"extension": [{"url": "http://example.org/x", "valueCode": "VV"}]}
    aligned = patient(name=[{"given": ["Peter", None], "_given": [None, extension]}])
    assert problems(aligned) == []
    both_null = patient(name=[{"given": ["Peter", None], "_given": [None, None]}])
    assert problems(both_null) == [
        (
            "structure",
            "`given` and `_given` must not both be null at the same index",
            ("Patient.name[0].given[1]",),
        )
    ]
    unequal = patient(name=[{"given": ["Peter", "James"], "_given": [extension]}])
    assert problems(unequal) == [
        (
            "structure",
            "`_given` must have as many items as `given` (2), not 1",
            ("Patient.name[0]._given",),
        )
    ]
    alone = patient(name=[{"_given": [None, extension]}], address=[{"line": ["a", None]}])
    assert problems(alone) == [
        (
            "structure",
            "`_given` has a null item with nothing at the same index of `given`",
            ("Patient.name[0]._given[0]",),
        ),
        (
            "structure",
            "`line` has a null item with nothing at the same index of `_line`",
            ("Patient.address[0].line[1]",),
        ),
    ]
    # Canonical arrays: the schema forgets `_profile`, FHIR JSON has it.
    meta = {"profile": ["http://example.org/p"], "_profile": [extension]}
    assert problems(patient(meta=meta)) == []


# --- resourceType and the body


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ([], [("structure", "a resource must be a JSON object, not an array", ())]),
        ("Patient", [("structure", "a resource must be a JSON object, not a string", ())]),
        (None, [("structure", "a resource must be a JSON object, not null", ())]),
        ({}, [("required", "missing required element `resourceType`", ("resourceType",))]),
        (
            {"resourceType": None},
            [("structure", "`resourceType` must not be null", ("resourceType",))],
        ),
        (
            {"resourceType": ["Patient"]},
            [("structure", "`resourceType` must be a string, not an array", ("resourceType",))],
        ),
        (
            {"resourceType": "Foo"},
            [("not-supported", "unknown resource type `Foo`", ("resourceType",))],
        ),
        (
            {"resourceType": "patient"},
            [("not-supported", "unknown resource type `patient`", ("resourceType",))],
        ),
        (
            {"resourceType": "DomainResource"},
            [("not-supported", "unknown resource type `DomainResource`", ("resourceType",))],
        ),
    ],
)
def test_bodies_without_a_usable_resource_type(body: object, expected: list[Any]) -> None:
    assert problems(body) == expected


@pytest.mark.parametrize("medplum_type", ["Project", "User", "ClientApplication", "AccessPolicy"])
def test_types_only_the_redistributed_schema_defines_are_rejected(medplum_type: str) -> None:
    assert medplum_type in json_schema()["definitions"]
    assert problems({"resourceType": medplum_type, "name": "x"}) == [
        ("not-supported", f"unknown resource type `{medplum_type}`", ("resourceType",))
    ]


def test_the_validator_knows_the_146_r4_types() -> None:
    assert VALIDATOR.resource_types == resource_types()
    assert len(VALIDATOR.resource_types) == 146


def test_expected_type_lets_a_body_without_resource_type_be_checked_in_full() -> None:
    found = problems({"gender": "mail", "foo": 1}, expected_type="Patient")
    assert [(code, path) for code, _, path in found] == [
        ("required", ("Patient.resourceType",)),
        ("value", ("Patient.gender",)),
        ("structure", ("Patient.foo",)),
    ]
    # expected_type is not compared with a usable resourceType: the caller does that.
    assert problems(observation(), expected_type="Patient") == []


def test_resource_type_of() -> None:
    assert resource_type_of({"resourceType": "Consent"}) == "Consent"
    assert VALIDATOR.resource_type_of({"resourceType": "Slot", "x": 1}) == "Slot"
    for body, message in [
        ({"resourceType": "Project"}, "unknown resource type `Project`"),
        ({}, "missing required element `resourceType`"),
        ([1], "a resource must be a JSON object, not an array"),
    ]:
        with pytest.raises(InvalidResource) as raised:
            resource_type_of(body)
        assert [issue.diagnostics for issue in raised.value.issues] == [message]


# --- resources inside resources


def test_bad_contained_resources() -> None:
    resource = load("CarePlan-example")
    assert resource["contained"][0]["resourceType"] == "Condition"
    resource["contained"][0]["clinicalStatus"] = "active"
    resource["contained"].append({"resourceType": "Practitioner", "name": [{"foo": 1}]})
    resource["contained"].append({"resourceType": "Project", "id": "p"})
    resource["contained"].append({"id": "no-type"})
    resource["contained"].append("Patient/1")
    resource["contained"].append(
        {"resourceType": "Organization", "id": "o", "contained": [{"resourceType": "Patient"}]}
    )
    assert problems(resource) == [
        (
            "structure",
            "`clinicalStatus` must be an object, not a string",
            ("CarePlan.contained[0].clinicalStatus",),
        ),
        ("structure", "unknown element `foo`", ("CarePlan.contained[1].name[0].foo",)),
        (
            "not-supported",
            "unknown resource type `Project`",
            ("CarePlan.contained[2].resourceType",),
        ),
        (
            "required",
            "missing required element `resourceType`",
            ("CarePlan.contained[3].resourceType",),
        ),
        (
            "structure",
            "`contained` must be a resource (an object), not a string",
            ("CarePlan.contained[4]",),
        ),
        (
            "invariant",
            "a contained resource must not contain resources (dom-2)",
            ("CarePlan.contained[5].contained",),
        ),
    ]


def test_bad_bundle_entry_resources() -> None:
    bundle = load("Bundle-bundle-transaction")
    assert bundle["type"] == "transaction"
    first = bundle["entry"][0]["resource"]
    assert first["resourceType"] == "Patient"
    first["gender"] = "mail"
    first["name"][0]["given"].append("")
    bundle["entry"][1]["resource"] = {"resourceType": "Nope"}
    bundle["entry"][2]["resource"]["contained"] = [{"resourceType": "Patient", "active": "yes"}]
    found = problems(bundle)
    given_index = len(first["name"][0]["given"]) - 1
    assert [(code, path) for code, _, path in found] == [
        ("value", ("Bundle.entry[0].resource.name[0].given[" + str(given_index) + "]",)),
        ("value", ("Bundle.entry[0].resource.gender",)),
        ("not-supported", ("Bundle.entry[1].resource.resourceType",)),
        ("structure", ("Bundle.entry[2].resource.contained[0].active",)),
    ]


def test_bundle_response_outcomes_and_parameters_resources_are_checked() -> None:
    bundle = load("Bundle-bundle-response")
    outcomes = [i for i, e in enumerate(bundle["entry"]) if "outcome" in e.get("response", {})]
    assert outcomes
    index = outcomes[0]
    bundle["entry"][index]["response"]["outcome"]["issue"][0]["severity"] = "bad"
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "p", "resource": {"resourceType": "Patient", "foo": 1}},
            {"name": "q", "part": [{"name": "r", "resource": {"resourceType": "Nope"}}]},
        ],
    }
    assert [path for _, _, path in problems(bundle)] == [
        (f"Bundle.entry[{index}].response.outcome.issue[0].severity",)
    ]
    assert problems(parameters) == [
        ("structure", "unknown element `foo`", ("Parameters.parameter[0].resource.foo",)),
        (
            "not-supported",
            "unknown resource type `Nope`",
            ("Parameters.parameter[1].part[0].resource.resourceType",),
        ),
    ]


# --- many problems, limits


def test_several_problems_are_all_reported_in_one_error() -> None:
    resource = load("Patient-example")
    resource["foo"] = 1
    resource["birthDate"] = "1974-02-30"
    resource["gender"] = "mail"
    resource["name"][0]["given"][1] = None
    resource["telecom"] = []
    resource["contact"][0]["name"]["family"] = ""
    resource["managingOrganization"] = {}
    with pytest.raises(InvalidResource) as raised:
        VALIDATOR.validate(resource)
    expressions = {issue.expression[0] for issue in raised.value.issues}
    assert expressions == {
        "Patient.foo",
        "Patient.birthDate",
        "Patient.gender",
        "Patient.name[0].given[1]",
        "Patient.telecom",
        "Patient.contact[0].name.family",
        "Patient.managingOrganization",
    }
    assert len(raised.value.issues) == 7
    assert all(issue.severity == "error" for issue in raised.value.issues)
    assert all(
        issue.diagnostics[0].islower() or issue.diagnostics[0] == "`"
        for issue in raised.value.issues
    )


def test_the_number_of_issues_is_capped() -> None:
    resource = patient(**{f"x{i}": 1 for i in range(MAX_ISSUES + 50)})
    found = VALIDATOR.issues(resource)
    assert len(found) == MAX_ISSUES + 1
    assert found[-1] == Issue(
        "too-costly", f"more than {MAX_ISSUES} problems; the rest are not listed"
    )


def test_absurd_nesting_is_an_invalid_resource_not_a_crash() -> None:
    extension: dict[str, Any] = {"url": "http://example.org/x", "valueString": "leaf"}
    for _ in range(5000):
        extension = {"url": "http://example.org/x", "extension": [extension]}
    found = VALIDATOR.issues(patient(extension=[extension]))
    assert found == [Issue("structure", "the resource is nested too deeply to be checked")]


# --- compiling and sharing


def test_warm_compiles_every_type_and_rejects_unknown_ones() -> None:
    validator = ResourceValidator()
    validator.warm(["Patient"])
    validator.warm()
    with pytest.raises(ValueError, match="unknown resource type `Project`"):
        validator.warm(["Project"])
    assert default_validator() is default_validator()


def test_concurrent_first_use_of_types_is_safe() -> None:
    validator = ResourceValidator()
    examples = list(_examples().values())
    failures: list[object] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        for example in examples:
            try:
                validator.validate(example)
            except InvalidResource as error:  # pragma: no cover - reported below
                failures.append(error.issues)
            bad = copy.deepcopy(example)
            bad["zzUnknown"] = 1
            if len(validator.issues(bad)) != 1:  # pragma: no cover
                failures.append(bad)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# --- properties


def _objects(value: object, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every JSON object in a resource with its FHIRPath-like location."""
    if isinstance(value, dict):
        yield path, value
        for key, item in value.items():
            yield from _objects(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _objects(item, f"{path}[{index}]")


def _string_leaves(value: object, path: str) -> Iterator[tuple[str, Any, str | int]]:
    """Every string value with its location, its holder and its key in the holder."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str) and key != "resourceType":
                yield f"{path}.{key}", value, key
            else:
                yield from _string_leaves(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str):
                yield f"{path}[{index}]", value, index
            else:
                yield from _string_leaves(item, f"{path}[{index}]")


example_names = st.sampled_from(sorted(path.stem for path in EXAMPLE_FILES))
unknown_keys = st.builds(
    lambda prefix, rest: prefix + rest,
    st.sampled_from(["zz", "_zz", "Zz", "zz_"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=5,
)
not_strings = st.sampled_from([None, True, False, 0, 1.5, [], {}, ["x"], {"x": "y"}])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(name=example_names, data=st.data(), key=unknown_keys, value=json_values)
def test_an_unknown_key_anywhere_is_reported_at_that_key(
    name: str, data: st.DataObject, key: str, value: object
) -> None:
    resource = copy.deepcopy(_examples()[name])
    places = list(_objects(resource, resource["resourceType"]))
    path, holder = data.draw(st.sampled_from(places))
    assume(key not in holder)
    holder[key] = value
    assert VALIDATOR.issues(resource) == [
        Issue("structure", f"unknown element `{key}`", expression=(f"{path}.{key}",))
    ]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(name=example_names, data=st.data(), replacement=not_strings)
def test_a_string_replaced_by_another_json_type_is_reported_at_its_place(
    name: str, data: st.DataObject, replacement: object
) -> None:
    resource = copy.deepcopy(_examples()[name])
    leaves = list(_string_leaves(resource, resource["resourceType"]))
    path, holder, key = data.draw(st.sampled_from(leaves))
    holder[key] = replacement
    found = VALIDATOR.issues(resource)
    assert found
    assert path in {issue.expression[0] for issue in found if issue.expression}


@cache
def _schema_validator(resource_type: str) -> jsonschema.Draft6Validator:
    definitions = dict(json_schema()["definitions"])
    # Only the top-level resource is compared; nested ones are dispatched by the validator.
    definitions["ResourceList"] = {"type": "object"}
    return jsonschema.Draft6Validator(
        {"$ref": f"#/definitions/{resource_type}", "definitions": definitions}
    )


# Text without the characters that the schema's Unicode \s and FHIR's ASCII \s disagree on.
schema_safe_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Zs", "Zl", "Zp"])
    | st.sampled_from(" \t\r\n"),
    max_size=6,
)
schema_safe_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | schema_safe_text,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(schema_safe_text, inner),
    max_leaves=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), value=schema_safe_values)
def test_whatever_the_json_schema_rejects_is_rejected(data: st.DataObject, value: object) -> None:
    """The compiled validator against the reference implementation, on random edits of small
    examples: never more lenient than the R4 JSON Schema."""
    small = [n for n, r in _examples().items() if len(json.dumps(r)) < 3000]
    resource = copy.deepcopy(_examples()[data.draw(st.sampled_from(sorted(small)))])
    places = list(_objects(resource, resource["resourceType"]))
    _, holder = data.draw(st.sampled_from(places))
    key = data.draw(st.sampled_from(sorted(holder)))
    assume(key != "resourceType")
    holder[key] = value
    schema_errors = list(_schema_validator(resource["resourceType"]).iter_errors(resource))
    if schema_errors:
        assert VALIDATOR.issues(resource)
