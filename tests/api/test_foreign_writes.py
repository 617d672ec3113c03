"""Issue 11, finding 1: a write never lands in a stranger's record. For Patient, RelatedPerson
and unverified callers, the result of a create, update or patch must not be in the Patient or
RelatedPerson compartment of anyone the caller may not write for, on every write path: create,
update, update-as-create, patch, conditional create, batch and transaction entries (also through
`urn:uuid` references), `$add-dependent`, and the Patient Service API. Each test tries to break
the rule; every denial is followed by proof that the database did not change.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.resources import observation, ref, years_ago
from tests.support.tokens import auth
from tests.support.world import World, latest_denial, snapshot


@pytest.fixture(scope="module")
def world(make_world: Callable[..., World]) -> World:
    return make_world(
        father=True,
        relative_of_other=True,
        consent_to_relative=("LAB_RESULTS",),
        second_mother=True,
    )


def as_(world: World, key: str, scope: str = "user/*.cruds") -> httpx.Client:
    return world.client(world.ref(key), scope)


def reason(response: httpx.Response) -> str:
    assert response.status_code == 403, response.text
    code: str = response.json()["issue"][0]["details"]["coding"][0]["code"]
    return code


def communication(world: World, *recipients: str, sender: str = "parent") -> dict[str, Any]:
    return {
        "resourceType": "Communication",
        "status": "completed",
        "subject": ref(world.ref("minor")),
        "sender": ref(world.ref(sender)),
        "recipient": [ref(r) for r in recipients],
        "payload": [{"contentString": "see you on Monday"}],
    }


def appointment(*actors: str) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "status": "booked",
        "participant": [{"actor": ref(a), "status": "accepted"} for a in actors],
    }


def compartments(db: psycopg.Connection[Any], reference: str) -> set[str]:
    type_, id = reference.split("/")
    row = db.execute(
        "SELECT compartments FROM resources WHERE resource_type = %s AND id = %s", (type_, id)
    ).fetchone()
    assert row is not None
    return set(row[0])


def refused(
    db: psycopg.Connection[Any], send: Any, expected: str = "foreign_compartment"
) -> httpx.Response:
    """Send a request that must be refused with `expected`, and prove it changed nothing."""
    before = snapshot(db)
    response = send()
    assert reason(response) == expected
    assert snapshot(db) == before
    return response


def accepted(response: httpx.Response) -> None:
    """A write the rule lets through: 201."""
    assert response.status_code == 201, response.text


# --- the example, and the audit of the denial ------------------------------------------


def test_a_parent_cannot_send_a_message_into_a_strangers_record(
    world: World, db: psycopg.Connection[Any]
) -> None:
    with as_(world, "parent") as parent:
        body = communication(world, world.ref("other"))
        refused(db, lambda: parent.post("/Communication", json=body))
        event = latest_denial(db, world.ref("parent"))
        assert event is not None
        assert event[0]["subtype"][0]["code"] == "create"
        assert event[0]["outcomeDesc"].startswith("foreign_compartment")
        # the same message to the child's own record (and the doctor) is fine
        fine = parent.post(
            "/Communication", json=communication(world, world.ref("minor"), world.ref("doctor"))
        )
        assert fine.status_code == 201, fine.text
        made = f"Communication/{fine.json()['id']}"
        assert world.ref("other") not in compartments(db, made)
    # the unrelated patient's record does not show any of it
    with as_(world, "other") as other:
        found = other.get("/Communication", params={"_count": "100"}).json()
        assert not found.get("entry")


def test_absolute_versioned_and_unknown_references_are_strangers_too(
    world: World, db: psycopg.Connection[Any]
) -> None:
    other = world.ref("other")
    with as_(world, "parent") as parent:
        nobody = f"Patient/{uuid.uuid4()}"  # refused alike: the answer tells nothing of existence
        for spelled in (f"{world.origin}/fhir/{other}", f"{other}/_history/1", nobody):
            body = communication(world, spelled)
            refused(db, lambda body=body: parent.post("/Communication", json=body))


# --- siblings: other types, other references, other callers ------------------------------------


def test_a_patient_cannot_name_another_patient_as_performer(
    world: World, db: psycopg.Connection[Any]
) -> None:
    adult, other = world.ref("adult"), world.ref("other")
    with as_(world, "adult") as patient:
        body = observation(adult, other)
        refused(db, lambda: patient.post("/Observation", json=body))
        theirs = observation(adult, world.ref("theirs"))
        refused(db, lambda: patient.post("/Observation", json=theirs))
        # a practitioner's compartment is not a stranger's record
        accepted(patient.post("/Observation", json=observation(adult, world.ref("doctor"))))


def test_appointments_name_only_the_family_and_practitioners(
    world: World, db: psycopg.Connection[Any]
) -> None:
    minor, parent_ref = world.ref("minor"), world.ref("parent")
    with as_(world, "parent") as parent:
        for stranger in ("other", "theirs", "adult", "relative"):
            body = appointment(minor, parent_ref, world.ref(stranger))
            refused(db, lambda body=body: parent.post("/Appointment", json=body))
        # the child's father is the child's relative; the doctor is a practitioner
        body = appointment(minor, parent_ref, world.ref("father"), world.ref("doctor"))
        accepted(parent.post("/Appointment", json=body))


def test_a_relative_by_consent_files_results_only_in_the_consenting_record(
    world: World, db: psycopg.Connection[Any]
) -> None:
    adult, relative = world.ref("adult"), world.ref("relative")
    with as_(world, "relative") as spouse:
        body = observation(adult, relative, world.ref("other"))
        refused(db, lambda: spouse.post("/Observation", json=body))
        accepted(spouse.post("/Observation", json=observation(adult, relative)))


def test_an_unverified_account_writes_only_about_its_linked_patient(
    world: World, db: psycopg.Connection[Any]
) -> None:
    other = world.ref("other")
    with as_(world, "account") as account:
        for stranger in ("minor", "adult", "parent"):
            body = observation(other, world.ref(stranger))
            refused(db, lambda body=body: account.post("/Observation", json=body))
        fine = account.post("/Observation", json=observation(other))
        accepted(fine)
        made = fine.json()
        # nor may it add a stranger to what it created
        made["performer"] = [ref(world.ref("minor"))]
        refused(db, lambda: account.put(f"/Observation/{made['id']}", json=made))


def test_a_person_writes_for_the_union_of_its_linked_identities(
    world: World, db: psycopg.Connection[Any]
) -> None:
    mum, minor, mum_parent = world.ref("mum"), world.ref("minor"), world.ref("mum_parent")
    with as_(world, "person") as person:
        accepted(person.post("/Appointment", json=appointment(mum, minor, mum_parent)))
        for stranger in ("other", "theirs", "adult"):
            body = appointment(mum, minor, mum_parent, world.ref(stranger))
            refused(db, lambda body=body: person.post("/Appointment", json=body))
    # the patient alone (her own token) is no parent of the minor: the child is a stranger to her
    with as_(world, "mum") as alone:
        assert alone.get(f"/{mum}").status_code == 200
    with world.client(mum) as alone:
        body = appointment(mum, world.ref("adult"))
        refused(db, lambda: alone.post("/Appointment", json=body))


# --- every write path ---------------------------------------------------------------------------


def test_update_and_patch_cannot_add_a_stranger(world: World, db: psycopg.Connection[Any]) -> None:
    with as_(world, "parent") as parent:
        made = parent.post("/Communication", json=communication(world, world.ref("minor")))
        assert made.status_code == 201, made.text
        resource = made.json()
        path = f"/Communication/{resource['id']}"
        resource["recipient"].append(ref(world.ref("other")))
        refused(db, lambda: parent.put(path, json=resource))
        operations = [{"op": "add", "path": "/recipient/-", "value": ref(world.ref("theirs"))}]
        refused(
            db,
            lambda: parent.patch(
                path,
                content=json.dumps(operations),
                headers={"Content-Type": "application/json-patch+json"},
            ),
        )
        assert parent.get(path).json()["meta"]["versionId"] == "1"


def test_a_resource_already_in_a_strangers_record_is_not_for_a_restricted_caller_to_change(
    world: World, db: psycopg.Connection[Any]
) -> None:
    # a System client filed it in the child's and the stranger's record alike
    made = world.create(observation(world.ref("minor"), world.ref("parent"), world.ref("other")))
    with as_(world, "parent") as parent:
        assert parent.get(f"/{made}").status_code == 200  # reads are not this rule's business
        operations = [{"op": "remove", "path": "/performer/1"}]
        refused(
            db,
            lambda: parent.patch(
                f"/{made}",
                content=json.dumps(operations),
                headers={"Content-Type": "application/json-patch+json"},
            ),
        )
        stored = parent.get(f"/{made}").json()
        stored["performer"] = stored["performer"][:1]
        refused(db, lambda: parent.put(f"/{made}", json=stored))


def test_update_as_create_with_a_stranger_creates_nothing(
    world: World, db: psycopg.Connection[Any]
) -> None:
    id = f"foreign-{uuid.uuid4().hex[:12]}"
    body = {**observation(world.ref("adult"), world.ref("other")), "id": id}
    with as_(world, "adult") as patient:
        refused(db, lambda: patient.put(f"/Observation/{id}", json=body))
    row = db.execute(
        "SELECT count(*) FROM resource_history WHERE resource_type = 'Observation' AND id = %s",
        (id,),
    ).fetchone()
    assert row == (0,)


def test_conditional_create_with_a_stranger_is_checked_like_a_create(
    world: World, db: psycopg.Connection[Any]
) -> None:
    body = {
        **observation(world.ref("adult"), world.ref("other")),
        "identifier": [{"system": "urn:test:foreign", "value": uuid.uuid4().hex}],
    }
    query = f"identifier=urn:test:foreign|{body['identifier'][0]['value']}"
    with as_(world, "adult") as patient:
        refused(
            db, lambda: patient.post("/Observation", json=body, headers={"If-None-Exist": query})
        )


def test_a_transaction_with_a_stranger_rolls_back_whole(
    world: World, db: psycopg.Connection[Any]
) -> None:
    minor, parent_ref = world.ref("minor"), world.ref("parent")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": observation(minor, parent_ref),
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": communication(world, world.ref("other")),
                "request": {"method": "POST", "url": "Communication"},
            },
        ],
    }
    with as_(world, "parent") as parent:
        response = refused(db, lambda: parent.post("", json=bundle))
        assert "Bundle.entry[1]" in response.json()["issue"][0]["expression"][0]


def test_a_transaction_cannot_reach_a_stranger_through_urn_uuid(
    world: World, db: psycopg.Connection[Any]
) -> None:
    other = world.system.get(f"/{world.ref('other')}").json()
    full_url = f"urn:uuid:{uuid.uuid4()}"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            # a PUT of the stranger's own Patient, only to give its reference a full URL
            {
                "fullUrl": full_url,
                "resource": other,
                "request": {"method": "PUT", "url": f"Patient/{other['id']}"},
            },
            {
                "resource": communication(world, full_url),
                "request": {"method": "POST", "url": "Communication"},
            },
        ],
    }
    with as_(world, "parent") as parent:
        response = refused(db, lambda: parent.post("", json=bundle))
        assert "Bundle.entry[1]" in response.json()["issue"][0]["expression"][0]
    # a new patient made in the same transaction is no way around it either
    new_patient = f"urn:uuid:{uuid.uuid4()}"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": new_patient,
                "resource": {"resourceType": "Patient", "name": [{"family": "Nobody"}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": communication(world, new_patient),
                "request": {"method": "POST", "url": "Communication"},
            },
        ],
    }
    with as_(world, "parent") as parent:
        before = snapshot(db)
        assert parent.post("", json=bundle).status_code == 403
        assert snapshot(db) == before


def test_a_batch_entry_with_a_stranger_fails_alone(
    world: World, db: psycopg.Connection[Any]
) -> None:
    minor, parent_ref = world.ref("minor"), world.ref("parent")
    marker = uuid.uuid4().hex
    fine = observation(minor, parent_ref, code=marker)
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": fine, "request": {"method": "POST", "url": "Observation"}},
            {
                "resource": observation(minor, parent_ref, world.ref("other"), code=marker),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    with as_(world, "parent") as parent:
        answer = parent.post("", json=bundle)
    assert answer.status_code == 200, answer.text
    first, second = (e["response"] for e in answer.json()["entry"])
    assert first["status"].startswith("201")
    assert second["status"].startswith("403")
    coding = second["outcome"]["issue"][0]["details"]["coding"][0]
    assert coding["code"] == "foreign_compartment"
    stored = db.execute(
        "SELECT compartments FROM resources WHERE resource_type = 'Observation'"
        " AND content->'code'->'coding'->0->>'code' = %s",
        (marker,),
    ).fetchall()
    assert len(stored) == 1 and world.ref("other") not in stored[0][0]


def test_a_transaction_patch_entry_cannot_add_a_stranger(
    world: World, db: psycopg.Connection[Any]
) -> None:
    with as_(world, "parent") as parent:
        made = parent.post("/Communication", json=communication(world, world.ref("minor")))
        assert made.status_code == 201, made.text
        operations = [{"op": "add", "path": "/recipient/-", "value": ref(world.ref("other"))}]
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": {
                        "resourceType": "Binary",
                        "contentType": "application/json-patch+json",
                        "data": base64.b64encode(json.dumps(operations).encode()).decode(),
                    },
                    "request": {"method": "PATCH", "url": f"Communication/{made.json()['id']}"},
                }
            ],
        }
        refused(db, lambda: parent.post("", json=bundle))


# --- the family operations and the Patient Service API -----------------------------------------


def test_add_dependent_cannot_file_the_new_dependent_in_another_record(
    world: World, db: psycopg.Connection[Any]
) -> None:
    # a primary of its own: a dependent added gives the primary a new family link
    primary_ref = world.create(
        {"resourceType": "Patient", "name": [{"family": "Primary"}], "birthDate": years_ago(40)}
    )
    for linked in ("other", "theirs", "adult", "primary"):
        target = primary_ref if linked == "primary" else world.ref(linked)
        dependent = {
            "resourceType": "Patient",
            "name": [{"family": "Newborn", "given": [linked]}],
            "birthDate": years_ago(1),
            "link": [{"other": ref(target), "type": "seealso"}],
        }
        body = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "relationship", "valueCode": "CHILD"},
                {"name": "dependent", "resource": dependent},
            ],
        }
        path = f"/{primary_ref}/$add-dependent"
        with world.client(primary_ref) as primary:
            refused(db, lambda body=body, path=path: primary.post(path, json=body))
    denial = latest_denial(db, primary_ref)
    assert denial is not None and denial[0]["outcomeDesc"].startswith("foreign_compartment")
    # the same dependent without the link is added
    dependent = {
        "resourceType": "Patient",
        "name": [{"family": "Newborn"}],
        "birthDate": years_ago(1),
    }
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "relationship", "valueCode": "CHILD"},
            {"name": "dependent", "resource": dependent},
        ],
    }
    with world.client(primary_ref) as primary:
        added = primary.post(f"/{primary_ref}/$add-dependent", json=body)
    assert added.status_code == 201, added.text


def test_the_patient_service_api_refuses_a_persons_token(
    world: World, db: psycopg.Connection[Any]
) -> None:
    api = f"{world.origin}/api/v1/patients"
    other_id = world.ref("other").split("/")[1]
    demographics = {
        "given_name": "Mallory",
        "family_name": "Takeover",
        "date_of_birth": "1980-01-01",
        "sex_at_birth": "female",
    }
    for who in ("adult", "parent", "account"):
        headers = auth(world.ref(who), "patient:read patient:write")
        before = snapshot(db)
        for response in (
            httpx.put(
                f"{api}/{other_id}", json=demographics, headers={**headers, "If-Match": 'W/"1"'}
            ),
            httpx.post(api, json=demographics, headers=headers),
            httpx.delete(f"{api}/{other_id}", headers=headers),
            httpx.get(f"{api}/{other_id}", headers=headers),
        ):
            assert response.status_code == 403, response.text
            assert response.json()["code"] == "forbidden"
        assert snapshot(db) == before
    denial = latest_denial(db, world.ref("account"))
    assert denial is not None and denial[0]["outcomeDesc"].startswith("invalid_role")
    # a service's token still works
    service = auth(scope="patient:read")
    assert httpx.get(f"{api}/{other_id}", headers=service).status_code == 200


def test_graphql_add_dependent_carries_no_reference_to_file_elsewhere(
    world: World, db: psycopg.Connection[Any]
) -> None:
    # the mutation shares `$add-dependent`'s service; its input has no field that could name
    # another record, and an attempt to smuggle one is refused before anything is written
    primary_ref = world.create(
        {"resourceType": "Patient", "name": [{"family": "Gql"}], "birthDate": years_ago(40)}
    )
    mutation = """
mutation Add($input: DependentInput!) { addDependent(input: $input) { id } }
"""
    smuggled = {
        "relationship": "CHILD",
        "familyName": "Newborn",
        "birthDate": years_ago(1),
        "link": world.ref("other"),
    }
    before = snapshot(db)
    answer = httpx.post(
        f"{world.origin}/graphql",
        json={"query": mutation, "variables": {"input": smuggled}},
        headers=auth(primary_ref, "user/*.cruds"),
        timeout=30,
    )
    assert answer.json().get("errors") and not answer.json().get("data")
    assert snapshot(db) == before
