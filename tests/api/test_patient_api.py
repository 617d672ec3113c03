"""The Phase 1 Patient Service API (`/api/v1/patients`) through HTTP against real PostgreSQL:
the specification's acceptance list, its validation rules and errors, and the mapping onto FHIR
Patient in both directions."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from fhir_server.settings import Settings
from tests.support.servers import LiveServer
from tests.support.tokens import auth, token

KEY = "test-key-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[LiveServer]:
    with LiveServer(
        Settings(
            patient_api_keys=Settings.from_env(
                {"PATIENT_API_KEYS": f"tests:{KEY}"}
            ).patient_api_keys
        ),
        database_url,
    ) as s:
        yield s


@pytest.fixture
def api(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"{server.origin}/api/v1", headers={"x-api-key": KEY}, timeout=30
    ) as c:
        yield c


def jane(**overrides: Any) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    body: dict[str, Any] = {
        "given_name": "  Jane ",
        "middle_name": "Wanjiru",
        "family_name": f"Doe   Kamau{''.join(c for c in tag if c.isalpha())}",
        "date_of_birth": "1990-04-01",
        "sex_at_birth": "female",
        "gender_identity": "woman",
        "email": f"Jane.{tag}@Example.org",
        "phone_e164": f"+2547{int(tag, 16) % 10**8:08d}",
        "address": {
            "line1": "1 Main St",
            "city": "Nairobi",
            "state_province": "Nairobi",
            "postal_code": "00100",
            "country": "KE",
        },
        "preferred_language": "en-KE",
        "consent_to_contact": True,
    }
    body.update(overrides)
    return body


def test_the_acceptance_list(api: httpx.Client, server: LiveServer) -> None:
    created = api.post("/patients", json=jane())
    assert created.status_code == 201, created.text
    patient = created.json()
    assert created.headers["ETag"] == 'W/"1"'
    uuid.UUID(patient["patient_id"], version=4)
    assert patient["given_name"] == "Jane" and patient["email"].islower()
    assert patient["version"] == 1 and patient["is_deleted"] is False
    id = patient["patient_id"]
    got = api.get(f"/patients/{id}")
    assert got.status_code == 200 and got.headers["ETag"] == 'W/"1"'
    # the same Patient through FHIR
    fhir = httpx.get(f"{server.origin}/fhir/Patient/{id}", headers=auth()).json()
    assert fhir["birthDate"] == "1990-04-01" and fhir["gender"] == "female"
    # PUT needs If-Match, and the current one
    changed = {
        **jane(family_name=patient["family_name"]),
        "email": patient["email"],
        "phone_e164": patient["phone_e164"],
        "given_name": "Janet",
    }
    assert api.put(f"/patients/{id}", json=changed).status_code == 428
    stale = api.put(f"/patients/{id}", json=changed, headers={"If-Match": 'W/"7"'})
    assert stale.status_code == 412 and stale.json()["code"] == "version_mismatch"
    updated = api.put(f"/patients/{id}", json=changed, headers={"If-Match": 'W/"1"'})
    assert updated.status_code == 200 and updated.json()["given_name"] == "Janet"
    assert (
        updated.headers["ETag"] == 'W/"2"' and updated.json()["created_at"] == patient["created_at"]
    )
    # search
    found = api.get(
        "/patients", params={"family_name": patient["family_name"], "dob": "1990-04-01"}
    ).json()
    assert [p["patient_id"] for p in found["items"]] == [id]
    assert (
        api.get("/patients", params={"email": patient["email"].upper()}).json()["items"][0][
            "patient_id"
        ]
        == id
    )
    # soft delete and restore
    assert api.delete(f"/patients/{id}").status_code == 204
    assert api.get(f"/patients/{id}").status_code == 404
    assert (
        httpx.get(f"{server.origin}/fhir/Patient/{id}/_history", headers=auth()).json()["total"]
        == 3
    )
    restored = api.post(f"/patients/{id}:restore")
    assert restored.status_code == 200 and restored.json()["given_name"] == "Janet"
    assert api.get(f"/patients/{id}").status_code == 200


def test_validation_rules(api: httpx.Client) -> None:
    bad = api.post(
        "/patients",
        json=jane(
            given_name="J4ne",
            date_of_birth="2999-01-01",
            sex_at_birth="f",
            email="not-an-email",
            phone_e164="0712345678",
            address={"line1": "x", "postal_code": "00100"},
            colour="blue",
        ),
    )
    assert bad.status_code == 400, bad.text
    body = bad.json()
    assert body["code"] == "validation_error"
    fields = {d["field"] for d in body["details"]}
    assert {
        "given_name",
        "date_of_birth",
        "sex_at_birth",
        "email",
        "phone_e164",
        "address.country",
        "colour",
    } <= fields
    too_old = api.post("/patients", json=jane(date_of_birth="1890-01-01"))
    assert {"field": "date_of_birth", "issue": "age at most 120"} in too_old.json()["details"]
    other = api.post("/patients", json=jane(gender_identity="man", gender_identity_other="x"))
    assert other.status_code == 400


def test_email_and_phone_are_unique(api: httpx.Client) -> None:
    first = api.post("/patients", json=jane()).json()
    twin = api.post("/patients", json=jane(email=first["email"].upper()))
    assert twin.status_code == 409 and twin.json()["code"] == "duplicate_email"
    twin = api.post("/patients", json=jane(phone_e164=first["phone_e164"]))
    assert twin.status_code == 409 and twin.json()["code"] == "duplicate_phone"


def test_authentication(server: LiveServer) -> None:
    url = f"{server.origin}/api/v1/patients"
    assert httpx.post(url, json=jane()).status_code == 401
    assert httpx.post(url, json=jane(), headers={"x-api-key": "wrong"}).status_code == 401
    reader = {"Authorization": f"Bearer {token(scope='patient:read system/Observation.rs')}"}
    assert httpx.post(url, json=jane(), headers=reader).status_code == 403
    assert httpx.get(url, headers=reader).status_code == 200
    writer = {
        "Authorization": f"Bearer {token(scope='patient:read patient:write system/Observation.rs')}"
    }
    assert httpx.post(url, json=jane(), headers=writer).status_code == 201


def test_a_fhir_patient_is_readable_here(api: httpx.Client, server: LiveServer) -> None:
    made = httpx.post(
        f"{server.origin}/fhir/Patient",
        headers=auth(),
        json={
            "resourceType": "Patient",
            "name": [{"family": "Fhir", "given": ["Made", "Here"]}],
            "birthDate": "1980-02-03",
            "telecom": [{"system": "phone", "value": "+254711111111"}],
        },
    ).json()
    seen = api.get(f"/patients/{made['id']}").json()
    assert seen["given_name"] == "Made" and seen["middle_name"] == "Here"
    assert seen["family_name"] == "Fhir" and seen["phone_e164"] == "+254711111111"


@pytest.fixture(scope="module")
def profiled(database_url: str) -> Iterator[LiveServer]:
    with LiveServer(Settings(patient_profile="phase1"), database_url) as s:
        yield s


def test_the_rules_as_a_profile_for_fhir_patient_writes(
    profiled: LiveServer, server: LiveServer
) -> None:
    bad = {
        "resourceType": "Patient",
        "name": [{"family": "D0e", "given": ["Ann"]}],
        "birthDate": "2999-01-01",
        "telecom": [{"system": "email", "value": "nope"}, {"system": "phone", "value": "0712"}],
        "address": [{"postalCode": "00100"}],
    }
    refused = httpx.post(f"{profiled.origin}/fhir/Patient", json=bad, headers=auth())
    assert refused.status_code == 422, refused.text
    where = {i["expression"][0] for i in refused.json()["issue"]}
    assert where == {
        "Patient.name[0].family",
        "Patient.birthDate",
        "Patient.telecom[0].value",
        "Patient.telecom[1].value",
        "Patient.address[0].country",
    }
    good = {
        **bad,
        "name": [{"family": "Doe"}],
        "birthDate": "1990-01-01",
        "telecom": [{"system": "phone", "value": "+254700000009"}],
        "address": [{"postalCode": "00100", "country": "KE"}],
    }
    assert (
        httpx.post(f"{profiled.origin}/fhir/Patient", json=good, headers=auth()).status_code == 201
    )
    # without the profile, FHIR writes follow R4 alone
    assert httpx.post(f"{server.origin}/fhir/Patient", json=bad, headers=auth()).status_code == 201


def wait_for_trail(api: httpx.Client, id: str, count: int, **params: Any) -> dict[str, Any]:
    """The audit trail once `count` changes are in it (the writer process stores allowed
    events within about half a second)."""
    deadline = time.monotonic() + 15
    while True:
        trail = api.get(f"/patients/{id}/audit", params=params)
        assert trail.status_code == 200, trail.text
        body: dict[str, Any] = trail.json()
        if len(body["items"]) >= count or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def test_every_change_is_in_the_audit_trail_with_a_diff_and_no_values(
    api: httpx.Client, server: LiveServer
) -> None:
    patient = api.post("/patients", json=jane()).json()
    id = patient["patient_id"]
    changed = {
        **jane(family_name=patient["family_name"], phone_e164=patient["phone_e164"]),
        "email": patient["email"],
        "given_name": "Janelle",
        "address": {**jane()["address"], "city": "Mombasa"},
    }
    assert api.put(f"/patients/{id}", json=changed, headers={"If-Match": 'W/"1"'}).is_success
    assert api.delete(f"/patients/{id}").status_code == 204
    assert api.post(f"/patients/{id}:restore").status_code == 200
    # a change through FHIR is in the same trail, in FHIR's terms
    fhir = httpx.get(f"{server.origin}/fhir/Patient/{id}", headers=auth()).json()
    fhir["birthDate"] = "1991-05-02"
    # a denied write is no change
    assert (
        httpx.put(
            f"{server.origin}/fhir/Patient/{id}", json=fhir, headers=auth("Practitioner/p1")
        ).status_code
        == 403
    )
    system_put = httpx.put(f"{server.origin}/fhir/Patient/{id}", json=fhir, headers=auth())
    assert system_put.status_code == 200, system_put.text

    trail = wait_for_trail(api, id, 5)["items"]
    assert [e["action"] for e in trail] == ["update", "restore", "delete", "update", "create"]
    assert all(e["patient_id"] == id and e["occurred_at"] for e in trail)
    assert trail[1]["actor"] == trail[4]["actor"] == "System/api-key:tests"
    assert trail[0]["actor"].startswith("System/") and trail[0]["actor"] != trail[1]["actor"]
    assert trail[0]["diff"] == [{"op": "replace", "path": "/birthDate"}]
    assert trail[1]["diff"] == [{"op": "replace", "path": "/is_deleted"}]
    assert trail[2]["diff"] == [{"op": "replace", "path": "/is_deleted"}]
    assert trail[3]["diff"] == [
        {"op": "replace", "path": "/given_name"},
        {"op": "replace", "path": "/address/city"},
    ]
    assert {"op": "add", "path": "/email"} in trail[4]["diff"]
    # never a value: not in the answer, not in the stored events
    text = orjson.dumps(trail).decode()
    events = httpx.get(
        f"{server.origin}/fhir/AuditEvent", params={"entity": f"Patient/{id}"}, headers=auth()
    ).text
    for phi in ("Janelle", "Jane", "Mombasa", "Nairobi", "1990-04-01", "1991-05-02"):
        assert phi not in text and phi not in events
    assert patient["email"] not in events and patient["phone_e164"] not in events

    # paging, newest first
    first = api.get(f"/patients/{id}/audit", params={"limit": 2}).json()
    assert [e["action"] for e in first["items"]] == ["update", "restore"]
    rest = api.get(f"/patients/{id}/audit", params={"cursor": first["next_cursor"]}).json()
    assert [e["action"] for e in rest["items"]] == ["delete", "update", "create"]
    assert rest["next_cursor"] is None


def test_the_audit_trail_errors(api: httpx.Client) -> None:
    missing = api.get(f"/patients/{uuid.uuid4()}/audit")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    id = api.post("/patients", json=jane()).json()["patient_id"]
    for params in ({"limit": "0"}, {"cursor": "nonsense"}, {"actor": "x"}):
        bad = api.get(f"/patients/{id}/audit", params=params)
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_query", params


def fhir_versions(db: psycopg.Connection[Any], id: str) -> int:
    row = db.execute(
        "SELECT count(*) FROM resource_history WHERE resource_type = 'Patient' AND id = %s", (id,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_put_of_what_get_returned_works(api: httpx.Client, db: psycopg.Connection[Any]) -> None:
    """Read, modify, write: the representation exactly as GET returned it, read-only fields
    (`patient_id`, `created_at`, `updated_at`, `version`, `is_deleted`) included."""
    id = api.post("/patients", json=jane()).json()["patient_id"]
    got = api.get(f"/patients/{id}")
    same = api.put(f"/patients/{id}", json=got.json(), headers={"If-Match": got.headers["ETag"]})
    assert same.status_code == 200, same.text
    assert same.json()["version"] == 2
    read = api.get(f"/patients/{id}")
    modified = {**read.json(), "given_name": "Modified", "address": None}
    changed = api.put(f"/patients/{id}", json=modified, headers={"If-Match": read.headers["ETag"]})
    assert changed.status_code == 200, changed.text
    assert changed.json()["given_name"] == "Modified" and changed.json()["address"] is None
    # timestamps may come back in another spelling of the same instant
    read = api.get(f"/patients/{id}").json()
    respelled = {**read, "updated_at": read["updated_at"].replace("+00:00", "Z")}
    assert read["updated_at"].endswith("+00:00")
    assert (
        api.put(f"/patients/{id}", json=respelled, headers={"If-Match": 'W/"3"'}).status_code == 200
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("patient_id", "7ed2da50-e841-45b7-85c1-c4b5d0886c3a"),
        ("created_at", "2001-01-01T00:00:00+00:00"),
        ("updated_at", "2001-01-01T00:00:00+00:00"),
        ("updated_at", "not a time"),
        ("version", 99),
        ("version", "1"),
        ("version", True),
        ("is_deleted", True),
        ("is_deleted", None),
    ],
)
def test_a_read_only_field_that_differs_is_400_naming_it(
    api: httpx.Client, db: psycopg.Connection[Any], field: str, value: Any
) -> None:
    id = api.post("/patients", json=jane()).json()["patient_id"]
    got = api.get(f"/patients/{id}").json()
    before = fhir_versions(db, id)
    refused = api.put(
        f"/patients/{id}",
        json={**got, "given_name": "Other", field: value},
        headers={"If-Match": 'W/"1"'},
    )
    assert refused.status_code == 400, refused.text
    body = refused.json()
    assert body["code"] == "validation_error"
    assert body["details"] == [
        {"field": field, "issue": "read-only: differs from the stored value"}
    ]
    assert fhir_versions(db, id) == before
    assert api.get(f"/patients/{id}").json() == got


def test_a_post_may_not_set_read_only_fields_and_optional_fields_default(
    api: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    body = jane()
    refused = api.post("/patients", json={**body, "patient_id": str(uuid.uuid4()), "version": 1})
    assert refused.status_code == 400
    assert refused.json()["details"] == [
        {"field": "patient_id", "issue": "read-only: set by the server"},
        {"field": "version", "issue": "read-only: set by the server"},
    ]
    # only the required fields: every optional one gets its documented default
    minimal = api.post(
        "/patients",
        json={
            "given_name": "Min",
            "family_name": "Imal",
            "date_of_birth": "2000-02-02",
            "sex_at_birth": "unknown",
        },
    )
    assert minimal.status_code == 201, minimal.text
    view = minimal.json()
    assert {k: view[k] for k in OPTIONAL_DEFAULTS} == OPTIONAL_DEFAULTS


OPTIONAL_DEFAULTS: dict[str, Any] = {
    "middle_name": None,
    "gender_identity": None,
    "gender_identity_other": None,
    "email": None,
    "phone_e164": None,
    "address": None,
    "preferred_language": None,
    "consent_to_contact": False,
}


def test_both_apis_read_if_match_the_same_way(api: httpx.Client, server: LiveServer) -> None:
    """One If-Match parser (services/formats/etags.py): a value names a version, or not, alike
    under `/fhir` and `/api/v1/patients`; each answers a value that names none with its 412."""
    id = api.post("/patients", json=jane()).json()["patient_id"]
    fhir_url = f"{server.origin}/fhir/Patient/{id}"
    resource = httpx.get(fhir_url, headers=auth()).json()
    # (`*` is the FHIR API's "any current version", RFC 9110; the Patient Service API, which
    # always wants the version read, takes no `*`: test_http_rules / test_etags)
    star = api.put(f"/patients/{id}", json=jane(), headers={"If-Match": "*"})
    assert star.status_code == 412 and star.json()["code"] == "version_mismatch"
    for value in ('W/"-1"', 'W/"1.0"', 'W/" 1"', 'W/"٣"', 'W/"1234567890"'):
        header = {"If-Match": value.encode()}  # bytes: httpx sends str values as ASCII only
        refused = api.put(f"/patients/{id}", json=jane(), headers=header)
        assert refused.status_code == 412 and refused.json()["code"] == "version_mismatch"
        assert "is not a version" in refused.json()["message"], value
        fhir = httpx.put(fhir_url, json=resource, headers={**auth(), **header})
        assert fhir.status_code == 412 and "names no version" in fhir.text, value
    assert api.get(f"/patients/{id}").headers["ETag"] == 'W/"1"'  # nothing was written
    # the ETag one API gives is an If-Match the other takes
    fhir = httpx.put(fhir_url, json=resource, headers={**auth(), "If-Match": '"1"'})
    assert fhir.status_code == 200 and fhir.headers["ETag"] == 'W/"2"'
    read = api.get(f"/patients/{id}")
    same = api.put(f"/patients/{id}", json=read.json(), headers={"If-Match": fhir.headers["ETag"]})
    assert same.status_code == 200 and same.headers["ETag"] == 'W/"3"'
