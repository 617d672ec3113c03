"""Compartment membership from the official R4 CompartmentDefinitions."""

from __future__ import annotations

from typing import Any

import pytest

from capability.definitions import COMPARTMENT_TYPES, compartment_definition, resource_types
from fhir_server.search.membership import compartment_membership, compartment_params

LOCAL = ("http://127.0.0.1:8080/fhir",)


def test_observation_subject_performer_encounter_device() -> None:
    observation = {
        "resourceType": "Observation",
        "id": "o1",
        "subject": {"reference": "Patient/1"},
        "performer": [
            {"reference": "RelatedPerson/9"},
            {"reference": "Practitioner/3"},
            {"reference": "Organization/5"},  # not a compartment type
        ],
        "encounter": {"reference": "Encounter/e1"},
        "device": {"reference": "Device/d1"},
    }
    assert compartment_membership(observation) == [
        "Device/d1",
        "Encounter/e1",
        "Patient/1",
        "Practitioner/3",
        "RelatedPerson/9",
    ]


def test_observation_about_a_group_or_another_server_is_in_no_patient_compartment() -> None:
    observation = {
        "resourceType": "Observation",
        "subject": {"reference": "Group/1"},
        "performer": [
            {"reference": "https://elsewhere.example/fhir/Patient/2"},
            {"reference": "urn:uuid:6b4f1c4e-0c19-4a8e-bb0a-0a2b8d1f7c11"},
            {"reference": "#contained-patient"},
            {"identifier": {"system": "mrn", "value": "123"}, "type": "Patient"},
        ],
    }
    assert compartment_membership(observation, local_bases=LOCAL) == []


def test_absolute_and_versioned_local_references_count() -> None:
    observation = {
        "resourceType": "Observation",
        "subject": {"reference": "http://127.0.0.1:8080/fhir/Patient/1/_history/3"},
        "performer": [{"reference": "Practitioner/3/_history/1"}],
    }
    assert compartment_membership(observation, local_bases=LOCAL) == [
        "Patient/1",
        "Practitioner/3",
    ]
    assert compartment_membership(observation) == ["Practitioner/3"]


def test_subject_that_is_a_device_places_in_the_device_compartment_only() -> None:
    observation = {"resourceType": "Observation", "subject": {"reference": "Device/d"}}
    assert compartment_membership(observation) == ["Device/d"]


def test_encounter() -> None:
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "subject": {"reference": "Patient/1"},
        "participant": [
            {"individual": {"reference": "Practitioner/3"}},
            {"individual": {"reference": "RelatedPerson/9"}},
            {"individual": {"reference": "PractitionerRole/4"}},
        ],
    }
    assert compartment_membership(encounter) == [
        "Encounter/e1",  # the focal resource is in its own compartment ({def})
        "Patient/1",
        "Practitioner/3",
        "RelatedPerson/9",
    ]


def test_appointment_actor_patient_and_related_person() -> None:
    appointment = {
        "resourceType": "Appointment",
        "id": "a1",
        "status": "booked",
        "participant": [
            {"actor": {"reference": "Patient/child"}, "status": "accepted"},
            {"actor": {"reference": "RelatedPerson/parent"}, "status": "accepted"},
            {"actor": {"reference": "Location/clinic"}, "status": "accepted"},
            {"actor": {"reference": "Device/d"}, "status": "accepted"},
        ],
    }
    assert compartment_membership(appointment) == [
        "Device/d",
        "Patient/child",
        "RelatedPerson/parent",
    ]
    assert compartment_params("Appointment") == {
        "actor": frozenset({"Patient", "RelatedPerson", "Practitioner", "Device"})
    }


def test_care_plan() -> None:
    care_plan = {
        "resourceType": "CarePlan",
        "subject": {"reference": "Patient/1"},
        "encounter": {"reference": "Encounter/e"},
        "activity": [
            {
                "detail": {
                    "performer": [{"reference": "RelatedPerson/9"}, {"reference": "Patient/2"}]
                }
            }
        ],
    }
    # CarePlan is in the Encounter compartment by `encounter`
    assert compartment_membership(care_plan) == [
        "Encounter/e",
        "Patient/1",
        "Patient/2",
        "RelatedPerson/9",
    ]


def test_patient_is_in_its_own_compartment_and_its_links() -> None:
    patient = {
        "resourceType": "Patient",
        "id": "7",
        "generalPractitioner": [{"reference": "Practitioner/3"}, {"reference": "Organization/1"}],
        "link": [{"other": {"reference": "Patient/8"}, "type": "seealso"}],
    }
    assert compartment_membership(patient) == ["Patient/7", "Patient/8", "Practitioner/3"]


def test_related_person_is_in_its_own_compartment_and_its_patients() -> None:
    related = {"resourceType": "RelatedPerson", "id": "9", "patient": {"reference": "Patient/1"}}
    assert compartment_membership(related) == ["Patient/1", "RelatedPerson/9"]


@pytest.mark.parametrize("compartment_type", COMPARTMENT_TYPES)
def test_every_compartment_type_is_in_its_own_compartment(compartment_type: str) -> None:
    resource = {"resourceType": compartment_type, "id": "self-1"}
    assert f"{compartment_type}/self-1" in compartment_membership(resource)


def test_an_invalid_own_id_is_not_a_compartment() -> None:
    assert compartment_membership({"resourceType": "Patient", "id": "not valid"}) == []
    assert compartment_membership({"resourceType": "Patient"}) == []


def test_consent() -> None:
    consent = {
        "resourceType": "Consent",
        "id": "c1",
        "patient": {"reference": "Patient/adult"},
        "performer": [{"reference": "Patient/adult"}, {"reference": "Practitioner/3"}],
        "provision": {
            "type": "permit",
            "actor": [
                {
                    "role": {"text": "caregiver"},
                    "reference": {"reference": "RelatedPerson/carer"},
                }
            ],
        },
    }
    # R4 places Consent in the Patient compartment by `patient` only; the RelatedPerson
    # definition does not list Consent, so a provision actor is not a compartment.
    assert compartment_membership(consent) == ["Patient/adult"]


def test_service_request() -> None:
    request = {
        "resourceType": "ServiceRequest",
        "subject": {"reference": "Patient/1"},
        "requester": {"reference": "Practitioner/3"},
        "performer": [{"reference": "RelatedPerson/9"}, {"reference": "Device/d"}],
        "encounter": {"reference": "Encounter/e"},
    }
    assert compartment_membership(request) == [
        "Device/d",
        "Encounter/e",
        "Patient/1",
        "Practitioner/3",
        "RelatedPerson/9",
    ]


def test_resource_outside_every_compartment() -> None:
    assert compartment_membership({"resourceType": "Organization", "id": "o"}) == []
    assert compartment_params("Organization") == {}


def test_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="`Foo`"):
        compartment_membership({"resourceType": "Foo"})
    with pytest.raises(ValueError, match="`None`"):
        compartment_membership({})


def test_every_definition_param_resolves_for_every_type() -> None:
    """Every param a CompartmentDefinition names has a compiled expression for that type."""
    for compartment in COMPARTMENT_TYPES:
        for entry in compartment_definition(compartment)["resource"]:
            rules = compartment_params(entry["code"])
            for code in entry.get("param", ()):
                if code != "{def}":
                    assert compartment in rules[code], (compartment, entry["code"], code)
    for resource_type in resource_types():
        compartment_params(resource_type)  # builds without error


def test_membership_is_sorted_and_unique() -> None:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "subject": {"reference": "Patient/b"},
        "performer": [{"reference": "Patient/b"}, {"reference": "Patient/a"}],
    }
    assert compartment_membership(resource) == ["Patient/a", "Patient/b"]
