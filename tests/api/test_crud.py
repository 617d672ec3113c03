"""create, read, vread, update, patch, delete over real HTTP against real PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.resources import patient

FHIR_JSON = "application/fhir+json"
LEAP_DAY = "1980-02-29"  # the birth date of the Patients created here


def create(client: httpx.Client, resource: dict[str, Any], **headers: str) -> httpx.Response:
    response = client.post(f"/{resource['resourceType']}", json=resource, headers=headers)
    assert response.status_code == 201, response.text
    return response


def json_patch(
    client: httpx.Client, url: str, ops: list[dict[str, Any]], if_match: str | None = None
) -> httpx.Response:
    """PATCH with a JSON Patch body (and an If-Match, if given)."""
    headers = {"Content-Type": "application/json-patch+json"}
    if if_match is not None:
        headers["If-Match"] = if_match
    content = httpx.Request("PATCH", "/", json=ops).content
    return client.patch(url, content=content, headers=headers)


def rows(db: psycopg.Connection[Any], rtype: str, id: str) -> tuple[Any, Any]:
    current = db.execute(
        "SELECT version_id, deleted, content FROM resources WHERE resource_type=%s AND id=%s",
        (rtype, id),
    ).fetchall()
    history = db.execute(
        "SELECT version_id, method, deleted FROM resource_history "
        "WHERE resource_type=%s AND id=%s ORDER BY version_id",
        (rtype, id),
    ).fetchall()
    return current, history


def test_create_assigns_id_and_answers_201_with_location_etag_last_modified(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    response = create(client, patient("Doe", "Jane", born=LEAP_DAY, id="client-chosen"))
    body = response.json()
    assert body["id"] != "client-chosen"
    assert response.headers["ETag"] == 'W/"1"'
    assert response.headers["Location"].endswith(f"/fhir/Patient/{body['id']}/_history/1")
    assert response.headers["Location"].startswith("http://127.0.0.1:")
    assert response.headers["Last-Modified"].endswith("GMT")
    assert response.headers["content-type"].startswith(FHIR_JSON)
    assert body["meta"]["versionId"] == "1"
    assert body["name"] == [{"family": "Doe", "given": ["Jane"]}]
    current, history = rows(db, "Patient", body["id"])
    assert current[0][:2] == (1, False)
    assert history == [(1, "POST", False)]


def test_read_returns_what_was_stored(client: httpx.Client) -> None:
    created = create(client, patient("Reader", "Jane", born=LEAP_DAY)).json()
    response = client.get(f"/Patient/{created['id']}")
    assert response.status_code == 200
    assert response.json() == created
    assert response.headers["ETag"] == 'W/"1"'


def test_read_unknown_id_is_404_operation_outcome(client: httpx.Client) -> None:
    response = client.get("/Patient/does-not-exist")
    assert response.status_code == 404
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "not-found"


def test_unknown_type_is_404_not_supported(client: httpx.Client) -> None:
    response = client.get("/Foo/1")
    assert response.status_code == 404
    assert response.json()["issue"][0]["code"] == "not-supported"
    assert "`Foo`" in response.json()["issue"][0]["diagnostics"]


def test_wrong_method_is_405_operation_outcome(client: httpx.Client) -> None:
    response = client.request("DELETE", "/metadata")
    assert response.status_code == 405
    assert response.json()["resourceType"] == "OperationOutcome"


def test_update_increments_version_and_honours_if_match(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    created = create(client, patient("Versioned", "Jane", born=LEAP_DAY)).json()
    id = created["id"]
    changed = {**created, "gender": "female"}
    response = client.put(f"/Patient/{id}", json=changed, headers={"If-Match": 'W/"1"'})
    assert response.status_code == 200, response.text
    assert response.headers["ETag"] == 'W/"2"'
    assert response.json()["gender"] == "female"
    assert response.json()["meta"]["versionId"] == "2"

    stale = client.put(
        f"/Patient/{id}", json={**changed, "gender": "male"}, headers={"If-Match": 'W/"1"'}
    )
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    # the stale write changed nothing
    assert client.get(f"/Patient/{id}").json()["gender"] == "female"
    current, history = rows(db, "Patient", id)
    assert current[0][0] == 2
    assert [h[0] for h in history] == [1, 2]


def test_vread_returns_each_version(client: httpx.Client) -> None:
    created = create(client, patient("Vread", "Jane", born=LEAP_DAY)).json()
    id = created["id"]
    client.put(f"/Patient/{id}", json={**created, "gender": "other"})
    v1 = client.get(f"/Patient/{id}/_history/1")
    v2 = client.get(f"/Patient/{id}/_history/2")
    assert v1.status_code == v2.status_code == 200
    assert "gender" not in v1.json()
    assert v2.json()["gender"] == "other"
    assert v1.headers["ETag"] == 'W/"1"'
    assert client.get(f"/Patient/{id}/_history/3").status_code == 404
    assert client.get(f"/Patient/{id}/_history/abc").status_code == 404


def test_update_as_create_uses_the_client_id(client: httpx.Client) -> None:
    response = client.put(
        "/Patient/chosen-by-client-1",
        json=patient("Doe", "Jane", born=LEAP_DAY, id="chosen-by-client-1"),
    )
    assert response.status_code == 201
    assert response.json()["id"] == "chosen-by-client-1"
    assert client.get("/Patient/chosen-by-client-1").status_code == 200


def test_update_with_if_match_on_missing_resource_is_412(client: httpx.Client) -> None:
    response = client.put(
        "/Patient/never-was-here",
        json=patient("Doe", "Jane", born=LEAP_DAY, id="never-was-here"),
        headers={"If-Match": 'W/"1"'},
    )
    assert response.status_code == 412
    assert client.get("/Patient/never-was-here").status_code == 404


@pytest.mark.parametrize(
    ("body_id", "fragment"),
    [(None, "has no `id`"), ("other-id", "does not match")],
)
def test_update_body_id_must_match_url(
    client: httpx.Client, body_id: str | None, fragment: str
) -> None:
    created = create(client, patient("Doe", "Jane", born=LEAP_DAY)).json()
    body = {**created}
    if body_id is None:
        del body["id"]
    else:
        body["id"] = body_id
    response = client.put(f"/Patient/{created['id']}", json=body)
    assert response.status_code == 400
    assert fragment in response.json()["issue"][0]["diagnostics"]


def test_resource_type_must_match_url(client: httpx.Client) -> None:
    response = client.post("/Observation", json=patient("Doe", "Jane", born=LEAP_DAY))
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["resourceType"]


def test_delete_is_soft_and_read_gives_410(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    created = create(client, patient("Deleted", "Jane", born=LEAP_DAY)).json()
    id = created["id"]
    response = client.delete(f"/Patient/{id}")
    assert response.status_code == 204
    assert client.get(f"/Patient/{id}").status_code == 410
    # deleting again changes nothing
    assert client.delete(f"/Patient/{id}").status_code == 204
    assert client.get(f"/Patient/{id}/_history/1").json()["name"][0]["family"] == "Deleted"
    assert client.get(f"/Patient/{id}/_history/2").status_code == 410
    current, history = rows(db, "Patient", id)
    assert current[0][:3] == (2, True, None)
    assert history == [(1, "POST", False), (2, "DELETE", True)]
    assert client.delete("/Patient/not-there").status_code == 404


def test_update_after_delete_revives_the_resource(client: httpx.Client) -> None:
    created = create(client, patient("Lazarus", "Jane", born=LEAP_DAY)).json()
    id = created["id"]
    client.delete(f"/Patient/{id}")
    response = client.put(f"/Patient/{id}", json=created)
    assert response.status_code == 201
    assert response.json()["meta"]["versionId"] == "3"
    assert client.get(f"/Patient/{id}").status_code == 200


def test_json_patch_is_applied_and_validated(client: httpx.Client) -> None:
    created = create(client, patient("Patched", "Jane", born=LEAP_DAY)).json()
    id = created["id"]
    ops = [{"op": "add", "path": "/gender", "value": "female"}]
    response = json_patch(client, f"/Patient/{id}", ops, if_match='W/"1"')
    assert response.status_code == 200, response.text
    assert response.json()["gender"] == "female"
    assert response.headers["ETag"] == 'W/"2"'

    invalid = [{"op": "add", "path": "/gender", "value": "not-a-gender-code"}]
    response = json_patch(client, f"/Patient/{id}", invalid)
    assert response.status_code == 400
    assert client.get(f"/Patient/{id}").json()["meta"]["versionId"] == "2"

    failing_test = [{"op": "test", "path": "/gender", "value": "male"}]
    response = json_patch(client, f"/Patient/{id}", failing_test)
    assert response.status_code == 422

    moving_id = [{"op": "replace", "path": "/id", "value": "elsewhere"}]
    response = json_patch(client, f"/Patient/{id}", moving_id)
    assert response.status_code == 422
    assert client.get(f"/Patient/{id}").json()["meta"]["versionId"] == "2"


def test_patch_with_stale_if_match_is_412(client: httpx.Client) -> None:
    created = create(client, patient("Doe", "Jane", born=LEAP_DAY)).json()
    ops = [{"op": "add", "path": "/gender", "value": "male"}]
    response = json_patch(client, f"/Patient/{created['id']}", ops, if_match='W/"7"')
    assert response.status_code == 412


def test_patch_needs_json_patch_media_type(client: httpx.Client) -> None:
    created = create(client, patient("Doe", "Jane", born=LEAP_DAY)).json()
    response = client.patch(f"/Patient/{created['id']}", json=[{"op": "remove", "path": "/gender"}])
    assert response.status_code == 415


@pytest.mark.parametrize(
    "prefer", ["return=minimal", "return=representation", "return=OperationOutcome"]
)
def test_prefer_return(client: httpx.Client, prefer: str) -> None:
    response = client.post(
        "/Patient", json=patient("Doe", "Jane", born=LEAP_DAY), headers={"Prefer": prefer}
    )
    assert response.status_code == 201
    assert "Location" in response.headers
    if prefer == "return=minimal":
        assert response.content == b""
    elif prefer == "return=representation":
        assert response.json()["resourceType"] == "Patient"
    else:
        assert response.json()["resourceType"] == "OperationOutcome"
        assert response.json()["issue"][0]["severity"] == "information"


def test_conditional_create(client: httpx.Client, db: psycopg.Connection[Any]) -> None:
    ident = {"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "conditional-12345"}
    body = patient("Conditional", "Jane", born=LEAP_DAY, identifier=[ident])
    criteria = f"identifier={ident['system']}|{ident['value']}"
    first = client.post("/Patient", json=body, headers={"If-None-Exist": criteria})
    assert first.status_code == 201
    second = client.post("/Patient", json=body, headers={"If-None-Exist": criteria})
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    count = db.execute(
        "SELECT count(*) FROM resources WHERE resource_type='Patient' AND content @> %s::jsonb",
        ('{"identifier":[{"value":"conditional-12345"}]}',),
    ).fetchone()
    assert count == (1,)
    # a second patient with the same identifier makes the criteria ambiguous: 412
    create(client, body)
    third = client.post("/Patient", json=body, headers={"If-None-Exist": criteria})
    assert third.status_code == 412


def test_conditional_create_takes_any_search(client: httpx.Client) -> None:
    family = f"Cond{uuid.uuid4().hex[:8]}"
    criteria = f"name={family}&birthdate=1970-01-01"
    body = {**patient(family, "Jane", born=LEAP_DAY), "birthDate": "1970-01-01"}
    first = client.post("/Patient", json=body, headers={"If-None-Exist": criteria})
    assert first.status_code == 201
    second = client.post("/Patient", json=body, headers={"If-None-Exist": criteria})
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]


def test_conditional_create_refuses_unknown_criteria(client: httpx.Client) -> None:
    before = client.get("/Patient?_summary=count").json()["total"]
    response = client.post(
        "/Patient",
        json=patient("Doe", "Jane", born=LEAP_DAY),
        headers={"If-None-Exist": "nickname=Doe"},
    )
    assert response.status_code == 400
    assert "`nickname`" in response.json()["issue"][0]["diagnostics"]
    assert client.get("/Patient?_summary=count").json()["total"] == before


def test_decimal_precision_survives_the_round_trip(client: httpx.Client) -> None:
    body = (
        b'{"resourceType": "Observation", "status": "final", "code": {"text": "weight"},'
        b' "valueQuantity": {"value": 72.50, "unit": "kg"},'
        b' "referenceRange": [{"low": {"value": 1.0e2}, "high": {"value": 123456789012345678.25}}]}'
    )
    response = client.post(
        "/Observation", content=body, headers={"Content-Type": "application/fhir+json"}
    )
    assert response.status_code == 201, response.text
    stored = client.get(f"/Observation/{response.json()['id']}").text
    assert '"value": 72.50' in stored or '"value":72.50' in stored
    assert "123456789012345678.25" in stored
    assert "1.0e2" in stored.lower() or "100" in stored
