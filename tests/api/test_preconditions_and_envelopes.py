"""What outside testing of the R4 core interactions found (2026-12-05), each as the class it
stands for: preconditions on every write (If-Match on DELETE, `*`), a Bundle's own elements
validated like a resource's, criteria in a create's URL refused in Bundles too, `_format` with an
unencoded `+`, and answers that say what happened."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest

from tests.api.test_bundles import table_counts, transaction
from tests.api.test_crud import create, json_patch, rows
from tests.support.resources import patient


def stored(client: httpx.Client) -> str:
    """The id of a new Patient at version 2."""
    id: str = create(client, patient("Precondition", "Pat")).json()["id"]
    body = {**patient("Precondition", "Pat"), "id": id, "active": True}
    assert client.put(f"/Patient/{id}", json=body).status_code == 200
    return id


def test_delete_with_a_stale_if_match_is_412_and_deletes_nothing(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    id = stored(client)
    before = rows(db, "Patient", id)
    response = client.delete(f"/Patient/{id}", headers={"If-Match": 'W/"1"'})
    assert response.status_code == 412, response.text
    assert "version 1" in response.json()["issue"][0]["diagnostics"]
    assert rows(db, "Patient", id) == before
    assert client.get(f"/Patient/{id}").status_code == 200


def test_delete_with_the_current_if_match_deletes(client: httpx.Client) -> None:
    id = stored(client)
    response = client.delete(f"/Patient/{id}", headers={"If-Match": 'W/"2"'})
    assert response.status_code == 204
    assert response.headers["ETag"] == 'W/"3"'
    assert client.get(f"/Patient/{id}").status_code == 410


def test_conditional_delete_honours_if_match(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    id = stored(client)
    before = rows(db, "Patient", id)
    stale = client.delete(f"/Patient?_id={id}", headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412, stale.text
    assert rows(db, "Patient", id) == before
    nothing = client.delete("/Patient?_id=no-such-patient", headers={"If-Match": "*"})
    assert nothing.status_code == 412, nothing.text
    assert client.delete(f"/Patient?_id={id}", headers={"If-Match": 'W/"2"'}).status_code == 204


def test_if_match_star_holds_for_any_current_version_only(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    id = stored(client)
    body = {**patient("Precondition", "Pat"), "id": id, "active": False}
    updated = client.put(f"/Patient/{id}", json=body, headers={"If-Match": "*"})
    assert updated.status_code == 200, updated.text
    assert updated.headers["ETag"] == 'W/"3"'
    patched = json_patch(
        client, f"/Patient/{id}", [{"op": "replace", "path": "/active", "value": True}], "*"
    )
    assert patched.status_code == 200, patched.text
    assert client.delete(f"/Patient/{id}", headers={"If-Match": "*"}).status_code == 204
    before = rows(db, "Patient", id)
    # deleted: no current representation, so `*` is false
    again = client.put(f"/Patient/{id}", json=body, headers={"If-Match": "*"})
    assert again.status_code == 412, again.text
    assert "was deleted" in again.json()["issue"][0]["diagnostics"]
    assert client.delete(f"/Patient/{id}", headers={"If-Match": "*"}).status_code == 412
    assert rows(db, "Patient", id) == before


def test_a_transaction_delete_with_a_stale_if_match_rolls_everything_back(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    id = stored(client)
    before = table_counts(db)
    bundle = transaction(
        {"request": {"method": "DELETE", "url": f"Patient/{id}", "ifMatch": 'W/"1"'}},
        {"resource": patient("Other", "One"), "request": {"method": "POST", "url": "Patient"}},
    )
    response = client.post("", json=bundle)
    assert response.status_code == 412, response.text
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[0]"]
    assert table_counts(db) == before
    batch = client.post("", json={**bundle, "type": "batch"})
    assert batch.status_code == 200
    answers = [e["response"]["status"] for e in batch.json()["entry"]]
    assert answers == ["412 Precondition Failed", "201 Created"]
    assert client.get(f"/Patient/{id}").status_code == 200


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_criteria_in_a_post_entrys_url_are_refused_not_ignored(
    client: httpx.Client, db: psycopg.Connection[Any], kind: str
) -> None:
    create(client, patient("Criteria", "One", identifier=[{"system": "urn:c", "value": "1"}]))
    before = table_counts(db)
    entry = {
        "resource": patient("Criteria", "One", identifier=[{"system": "urn:c", "value": "1"}]),
        "request": {"method": "POST", "url": "Patient?identifier=urn:c|1"},
    }
    response = client.post("", json=transaction(entry, kind=kind))
    if kind == "transaction":
        assert response.status_code == 400, response.text
        issue = response.json()["issue"][0]
    else:
        assert response.status_code == 200, response.text
        answer = response.json()["entry"][0]["response"]
        assert answer["status"] == "400 Bad Request"
        issue = answer["outcome"]["issue"][0]
    assert "ifNoneExist" in issue["diagnostics"]
    assert issue["expression"] == ["Bundle.entry[0].request.url"]
    assert table_counts(db) == before


def test_a_misspelt_request_element_is_refused_with_its_location(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    before = table_counts(db)
    entry = {
        "resource": patient("Misspelt", "One"),
        "request": {"method": "POST", "url": "Patient", "ifNoneExists": "identifier=a|b"},
    }
    response = client.post("", json=transaction(entry))
    assert response.status_code == 400, response.text
    expressions = [i["expression"] for i in response.json()["issue"]]
    assert ["Bundle.entry[0].request.ifNoneExists"] in expressions
    unknown = client.post("", json={**transaction(), "foo": 1})
    assert unknown.status_code == 400, unknown.text
    assert unknown.json()["issue"][0]["expression"] == ["Bundle.foo"]
    # a batch answers the bad entry alone
    good = {"resource": patient("Misspelt", "Two"), "request": {"method": "POST", "url": "Patient"}}
    batch = client.post("", json=transaction(entry, good, kind="batch"))
    assert batch.status_code == 200, batch.text
    statuses = [e["response"]["status"] for e in batch.json()["entry"]]
    assert statuses == ["400 Bad Request", "201 Created"]
    assert table_counts(db)[0] == before[0] + 1
    # an empty `entry` array stays accepted
    assert client.post("", json={**transaction(), "entry": []}).status_code == 200


def test_format_with_an_unencoded_plus_is_json(client: httpx.Client) -> None:
    for query in ("_format=application/fhir+json", "_format=application/fhir%2Bjson"):
        response = client.get(f"/metadata?{query}")
        assert response.status_code == 200, (query, response.text)
    with_version = client.get("/metadata?_format=application/fhir+json;fhirVersion=4.0")
    assert with_version.status_code == 200, with_version.text
    assert client.get("/metadata?_format=application/fhir+xml").status_code == 406


def test_a_matched_conditional_create_says_nothing_was_written(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    identifier = [{"system": "urn:matched", "value": "1"}]
    id = create(client, patient("Matched", "One", identifier=identifier)).json()["id"]
    before = rows(db, "Patient", id)
    response = client.post(
        "/Patient",
        json=patient("Matched", "One", identifier=identifier),
        headers={"If-None-Exist": "identifier=urn:matched|1", "Prefer": "return=OperationOutcome"},
    )
    assert response.status_code == 200, response.text
    said = response.json()["issue"][0]["diagnostics"]
    assert said == f"`Patient/{id}` already exists and matches the criteria"
    assert rows(db, "Patient", id) == before


def test_an_invalid_id_is_400_on_every_instance_write(client: httpx.Client) -> None:
    op = [{"op": "replace", "path": "/active", "value": True}]
    for response in (
        client.delete("/Patient/bad!id"),
        json_patch(client, "/Patient/bad!id", op),
        client.put("/Patient/bad!id", json={**patient("Bad", "Id"), "id": "bad!id"}),
    ):
        assert response.status_code == 400, response.text
        assert "not a valid resource id" in response.json()["issue"][0]["diagnostics"]


def test_a_failed_json_patch_test_says_where_without_internals(client: httpx.Client) -> None:
    id = create(client, {**patient("Tested", "One"), "active": False}).json()["id"]
    response = json_patch(
        client, f"/Patient/{id}", [{"op": "test", "path": "/active", "value": True}]
    )
    assert response.status_code == 422, response.text
    said = response.json()["issue"][0]["diagnostics"]
    assert "`/active`" in said and "<class" not in said and "True" not in said
