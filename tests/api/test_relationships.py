"""The relationship service API through HTTP with real tokens: verification answered by the
engine, delegations as Consents (auto and manual approval), the statuses of the specification,
and the metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest

from fhir_server.settings import Settings
from tests.support.servers import LiveServer
from tests.support.tokens import auth
from tests.support.world import World, snapshot


@pytest.fixture(scope="module")
def world(make_world: Callable[..., World]) -> World:
    return make_world()


def api(origin: str, who: str | None = None, scope: str = "user/*.cruds") -> httpx.Client:
    headers = auth(who, scope) if who else auth()
    return httpx.Client(base_url=f"{origin}/api/v1/relationships", timeout=30, headers=headers)


def bare(reference: str) -> str:
    return reference.split("/", 1)[1]


def verify(service: httpx.Client, requester: str, patient: str, **fields: Any) -> httpx.Response:
    """POST /verify: who asks about which patient, and the optional fields."""
    body = {"requesting_user_id": requester, "patient_id": patient, **fields}
    return service.post("/verify", json=body)


def verified(response: httpx.Response) -> dict[str, Any]:
    """A 200 answer of /verify that verifies the relationship: its body."""
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["relationship_verified"] is True
    return body


def delegate(
    client: httpx.Client, patient: str, delegate_id: str, scope: list[str], **fields: Any
) -> httpx.Response:
    """POST /delegate: the patient, its delegate and the scope, and the optional fields."""
    body = {"patient_id": patient, "delegate_id": delegate_id, "delegation_scope": scope, **fields}
    return client.post("/delegate", json=body)


def test_verify_answers_with_the_engine(world: World) -> None:
    with api(world.origin) as service:
        parent = verify(
            service,
            world.ref("parent"),
            bare(world.ref("minor")),
            relationship_type="family_member",
            access_purpose="care_coordination",
            data_scope=["medical_history", "lab_results"],
        )
        body = verified(parent)
        assert body["access_granted"] is True
        assert body["relationship_type"] == "mother"
        assert body["access_scope"] == ["medical_history", "lab_results"]
        assert body["delegation_chain"][0] == {
            "delegator_id": bare(world.ref("minor")),
            "delegated_to": bare(world.ref("parent")),
            "relationship": "mother",
        }
        relative = verify(
            service,
            bare(world.ref("relative")),
            bare(world.ref("adult")),
            data_scope=["demographics", "lab_results"],
        ).json()
        assert relative["relationship_verified"] is True
        assert relative["access_granted"] is False
        assert relative["access_scope"] == ["demographics"]
        assert relative["reasons"]["lab_results"] == "consent_required"
        adult = bare(world.ref("adult"))
        doctor = verify(service, world.ref("doctor"), adult, data_scope=["medication_list"]).json()
        assert doctor["relationship_type"] == "healthcare_provider"
        assert doctor["access_granted"] is True
        stranger = verify(
            service, world.ref("stranger"), adult, data_scope=["medication_list"]
        ).json()
        assert stranger["relationship_verified"] is False and stranger["access_scope"] == []


def test_verify_statuses(world: World) -> None:
    good = {
        "requesting_user_id": world.ref("parent"),
        "patient_id": bare(world.ref("minor")),
        "data_scope": ["lab_results"],
    }
    with api(world.origin) as service:
        assert service.post("/verify", json={**good, "data_scope": ["dna"]}).status_code == 400
        assert service.post("/verify", json={"patient_id": "x"}).json()["code"] == "invalid_request"
        missing = service.post("/verify", json={**good, "patient_id": "no-such-patient"})
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    unauthenticated = httpx.post(f"{world.origin}/api/v1/relationships/verify", json=good)
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["WWW-Authenticate"].startswith("Bearer")
    # a user may ask about itself; not about somebody else
    with api(world.origin, world.ref("parent")) as parent:
        assert parent.post("/verify", json=good).status_code == 200
    with api(world.origin, world.ref("stranger")) as stranger:
        refused = stranger.post("/verify", json=good)
        assert refused.status_code == 403 and refused.json()["code"] == "not_authorized"


def test_a_patient_delegates_and_the_delegate_gets_access(world: World) -> None:
    with world.client(world.ref("relative"), "user/*.rs") as relative:
        encounter = world.create(
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "AMB",
                },
                "subject": {"reference": world.ref("adult")},
            }
        )
        assert relative.get(f"/{encounter}").status_code == 403
        with api(world.origin, world.ref("adult")) as patient:
            made = delegate(
                patient,
                bare(world.ref("adult")),
                bare(world.ref("relative")),
                ["encounters"],
                expires_at="2099-12-31",
            )
            assert made.status_code == 201, made.text
            assert made.json()["status"] == "active"
            assert made.json()["expires_at"] == "2099-12-31T23:59:59Z"
        assert relative.get(f"/{encounter}").status_code == 200
        consent = world.system.get(f"/Consent/{made.json()['delegation_id']}").json()
        assert consent["provision"]["actor"][0]["reference"]["reference"] == world.ref("relative")


def test_a_relative_only_asks_and_the_patient_approves(
    world: World, db: psycopg.Connection[Any]
) -> None:
    appointment = world.create(
        {
            "resourceType": "Appointment",
            "status": "booked",
            "participant": [{"actor": {"reference": world.ref("adult")}, "status": "accepted"}],
        }
    )
    with api(world.origin, world.ref("relative")) as relative_api:
        asked = delegate(
            relative_api, bare(world.ref("adult")), bare(world.ref("relative")), ["appointments"]
        )
        assert asked.status_code == 201 and asked.json()["status"] == "proposed"
        delegation = asked.json()["delegation_id"]
        with world.client(world.ref("relative"), "user/*.rs") as relative:
            assert relative.get(f"/{appointment}").status_code == 403
            # nor can the relative approve its own request
            before = snapshot(db)
            assert relative_api.post(f"/delegate/{delegation}/approve").status_code == 403
            assert snapshot(db) == before
            with api(world.origin, world.ref("adult")) as patient:
                approved = patient.post(f"/delegate/{delegation}/approve")
                assert approved.status_code == 200 and approved.json()["status"] == "active"
            assert relative.get(f"/{appointment}").status_code == 200
    # a stranger delegates nothing
    with api(world.origin, world.ref("stranger")) as stranger:
        refused = delegate(
            stranger, bare(world.ref("adult")), bare(world.ref("relative")), ["appointments"]
        )
        assert refused.status_code == 403


def test_a_delegation_needs_the_tokens_scopes(world: World, db: psycopg.Connection[Any]) -> None:
    """The delegation is written as the server: the caller's token must still grant writing
    Consents for the patient (policy AND scope), to a patient, to a relative asking for
    itself, and to the approval."""
    adult, relative = bare(world.ref("adult")), bare(world.ref("relative"))
    with api(world.origin, world.ref("relative")) as relative_api:
        asked = delegate(relative_api, adult, relative, ["encounters"])
        assert asked.status_code == 201, asked.text
    pending = asked.json()["delegation_id"]
    before = snapshot(db)
    for who, scope in (
        (world.ref("adult"), "openid fhirUser"),
        (world.ref("adult"), "user/*.rs"),
        (world.ref("relative"), "user/*.rs"),
    ):
        with api(world.origin, who, scope) as caller:
            refused = delegate(caller, adult, relative, ["encounters"])
            assert refused.status_code == 403, refused.text
            assert refused.json()["code"] == "not_authorized", refused.text
    with api(world.origin, world.ref("adult"), "user/*.rs") as patient:
        refused = patient.post(f"/delegate/{pending}/approve")
        assert refused.status_code == 403, refused.text
    assert snapshot(db) == before


@pytest.fixture(scope="module")
def manual(database_url: str) -> Iterator[LiveServer]:
    with LiveServer(Settings(delegation_approval="manual"), database_url) as server:
        yield server


def test_manual_approval_makes_every_delegation_wait(world: World, manual: LiveServer) -> None:
    with api(manual.origin, world.ref("adult")) as patient:
        made = delegate(
            patient, bare(world.ref("adult")), bare(world.ref("relative")), ["prescriptions"]
        )
        assert made.status_code == 201 and made.json()["status"] == "proposed"
        assert (
            patient.post(f"/delegate/{made.json()['delegation_id']}/approve").json()["status"]
            == "active"
        )


def test_metrics_count_verifications_and_delegations(world: World, live_server: LiveServer) -> None:
    with api(world.origin) as service:
        verify(service, world.ref("parent"), bare(world.ref("minor")), data_scope=["lab_results"])
    text = httpx.get(f"{live_server.origin}/metrics").text
    for name in (
        'relationship_verifications_total{result="granted"}',
        "delegation_requests_total",
        "\nrelationship_cache_hits ",
        "verification_response_time_seconds_count",
    ):
        assert name in text, name


def put(origin: str, resource: dict[str, Any]) -> None:
    """A resource with the id the specification's example uses (update as create)."""
    with httpx.Client(base_url=f"{origin}/fhir", timeout=30, headers=auth()) as system:
        answer = system.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
        assert answer.status_code in (200, 201), answer.text


def spec_people(origin: str, patient: str, provider: str, relative: str | None = None) -> None:
    put(origin, {"resourceType": "Patient", "id": patient, "birthDate": "1980-01-01"})
    put(origin, {"resourceType": "Practitioner", "id": provider})
    put(
        origin,
        {
            "resourceType": "CareTeam",
            "id": f"team-{patient}"[:64],
            "status": "active",
            "subject": {"reference": f"Patient/{patient}"},
            "participant": [{"member": {"reference": f"Practitioner/{provider}"}}],
        },
    )
    if relative is not None:
        put(
            origin,
            {
                "resourceType": "RelatedPerson",
                "id": relative,
                "patient": {"reference": f"Patient/{patient}"},
                "relationship": [{"coding": [{"code": "SPS"}]}],
            },
        )


def test_the_specifications_verify_examples_verbatim(live_server: LiveServer) -> None:
    """Both verification requests of relationship-management-service.md, exactly as written:
    the request of its API section, and the `curl` of its Run & Test section, which has no
    `data_scope` (and no `access_purpose`): every kind of data is asked about."""
    spec_people(
        live_server.origin,
        "456e7890-e89b-12d3-a456-426614174000",
        "123e4567-e89b-12d3-a456-426614174000",
    )
    spec_people(live_server.origin, "test-patient", "test-provider", "test-family-member")
    with api(live_server.origin) as service:
        full = verify(
            service,
            "123e4567-e89b-12d3-a456-426614174000",
            "456e7890-e89b-12d3-a456-426614174000",
            relationship_type="healthcare_provider",
            access_purpose="treatment_coordination",
            data_scope=["medical_history", "medication_list"],
        )
        answer = verified(full)
        assert answer["relationship_type"] == "healthcare_provider"
        assert answer["access_granted"] is True
        assert answer["access_scope"] == ["medical_history", "medication_list"]
        assert answer["delegation_chain"][0]["delegator_id"] == (
            "456e7890-e89b-12d3-a456-426614174000"
        )
        short = service.post(
            "/verify",
            content=b"""{
    "requesting_user_id": "test-provider",
    "patient_id": "test-patient",
    "relationship_type": "healthcare_provider"
  }""",
            headers={"Content-Type": "application/json"},
        )
        answer = verified(short)
        assert answer["relationship_type"] == "healthcare_provider"
        defaults = [
            "demographics",
            "medical_history",
            "medication_list",
            "lab_results",
            "encounters",
            "appointments",
        ]
        assert list(answer["reasons"]) == defaults
        assert answer["access_scope"] == [s for s in defaults if answer["reasons"][s] == "allowed"]
        assert answer["access_granted"] is (answer["access_scope"] == defaults)
        assert answer["access_scope"]  # a care relationship reads the chart
        # a relative without consent: the default asks about all, and grants demographics only
        relative = verify(service, "test-family-member", "test-patient").json()
        assert relative["access_scope"] == ["demographics"]
        assert relative["access_granted"] is False
        assert relative["reasons"]["lab_results"] == "consent_required"
        # optional fields, when given, must still be what they say they are
        for wrong in ({"access_purpose": 7}, {"relationship_type": ["x"]}, {"data_scope": []}):
            refused = verify(service, "test-provider", "test-patient", **wrong)
            assert refused.status_code == 400
            assert refused.json()["code"] == "invalid_request"
            assert next(iter(wrong)) in refused.json()["message"]


def test_the_specifications_delegate_example_verbatim(
    live_server: LiveServer, db: psycopg.Connection[Any]
) -> None:
    """The `curl` of the Run & Test section: `delegator_id` (the specification's name of the
    patient), and its `basic_health_info` scope (demographics and the clinical summary), with
    the patient's token as the API section says; no `expires_at`: no end."""
    spec_people(live_server.origin, "test-patient", "test-provider", "test-family-member")
    with api(live_server.origin, "Patient/test-patient") as patient:
        made = patient.post(
            "/delegate",
            content=b"""{
    "delegator_id": "test-patient",
    "delegate_id": "test-family-member",
    "delegation_scope": ["basic_health_info"]
  }""",
            headers={"Content-Type": "application/json"},
        )
        assert made.status_code == 201, made.text
        answer = made.json()
        assert answer["status"] == "active"
        assert answer["delegator_id"] == "test-patient"
        assert answer["delegate_id"] == "test-family-member"
        assert answer["delegation_scope"] == ["basic_health_info"]
        assert answer["expires_at"] is None
    with api(live_server.origin) as service:
        relative = verify(
            service,
            "test-family-member",
            "test-patient",
            data_scope=["basic_health_info", "medical_history", "lab_results"],
        ).json()
        assert relative["access_scope"] == ["basic_health_info", "medical_history"]
    consent = db.execute(
        "SELECT content FROM resources WHERE resource_type = 'Consent' AND id = %s",
        (answer["delegation_id"],),
    ).fetchone()
    assert consent is not None
    provision = consent[0]["provision"]
    assert [c["coding"][0]["code"] for c in provision["code"]] == [
        "DEMOGRAPHICS",
        "CLINICAL_SUMMARY",
    ]
    assert "end" not in provision["period"]
    # `patient_id` and `delegator_id` naming two patients is refused, and writes nothing
    before = snapshot(db)
    with api(live_server.origin) as service:
        refused = service.post(
            "/delegate",
            json={
                "patient_id": "456e7890-e89b-12d3-a456-426614174000",
                "delegator_id": "test-patient",
                "delegate_id": "test-family-member",
                "delegation_scope": ["encounters"],
            },
        )
    assert refused.status_code == 400 and "delegator_id" in refused.json()["message"]
    assert snapshot(db) == before
