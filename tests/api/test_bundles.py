"""batch and transaction Bundles posted to /fhir."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx
import psycopg


def table_counts(db: psycopg.Connection[Any]) -> tuple[int, int]:
    current = db.execute(
        "SELECT count(*) FROM resources WHERE resource_type <> 'AuditEvent'"
    ).fetchone()
    history = db.execute(
        "SELECT count(*) FROM resource_history WHERE resource_type <> 'AuditEvent'"
    ).fetchone()
    assert current is not None and history is not None
    return int(current[0]), int(history[0])


def transaction(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


PATIENT_URN = "urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059"


def observation(subject: str, text: str) -> dict[str, Any]:
    """A final Observation of `subject` coded by text only."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": text},
        "subject": {"reference": subject},
    }


def post(resource: dict[str, Any], full_url: str | None = None) -> dict[str, Any]:
    """A Bundle entry that creates the resource (with its full URL, if given)."""
    entry: dict[str, Any] = {} if full_url is None else {"fullUrl": full_url}
    return {
        **entry,
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def test_transaction_resolves_urn_uuid_references(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    bundle = transaction(
        post(
            {**observation(PATIENT_URN, "weight"), "performer": [{"reference": PATIENT_URN}]},
            "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
        ),
        post({"resourceType": "Patient", "name": [{"family": "Bundled"}]}, PATIENT_URN),
    )
    response = client.post("", json=bundle)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    observation_entry, patient_entry = result["entry"]
    assert observation_entry["response"]["status"] == "201 Created"
    patient_id = patient_entry["response"]["location"].split("/")[1]
    observation_id = observation_entry["response"]["location"].split("/")[1]
    stored = client.get(f"/Observation/{observation_id}").json()
    assert stored["subject"] == {"reference": f"Patient/{patient_id}"}
    assert stored["performer"] == [{"reference": f"Patient/{patient_id}"}]
    compartments = db.execute(
        "SELECT compartments FROM resources WHERE resource_type='Observation' AND id=%s",
        (observation_id,),
    ).fetchone()
    assert compartments is not None and f"Patient/{patient_id}" in compartments[0]


def test_failed_transaction_changes_nothing(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    existing = client.post("/Patient", json={"resourceType": "Patient", "gender": "male"}).json()
    other = client.post("/Patient", json={"resourceType": "Patient", "gender": "male"}).json()
    before = table_counts(db)
    bundle = transaction(
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {
            "resource": {**existing, "gender": "female"},
            "request": {"method": "PUT", "url": f"Patient/{existing['id']}"},
        },
        {"request": {"method": "DELETE", "url": f"Patient/{other['id']}"}},
        {
            "resource": {"resourceType": "Patient", "birthDate": "not-a-date"},
            "request": {"method": "POST", "url": "Patient"},
        },
    )
    response = client.post("", json=bundle)
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert issue["expression"][0].startswith("Bundle.entry[3]")
    assert table_counts(db) == before
    assert client.get(f"/Patient/{existing['id']}").json()["gender"] == "male"
    assert client.get(f"/Patient/{other['id']}").status_code == 200


def test_transaction_with_stale_if_match_rolls_back(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    existing = client.post("/Patient", json={"resourceType": "Patient"}).json()
    before = table_counts(db)
    bundle = transaction(
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {
            "resource": {**existing, "gender": "female"},
            "request": {"method": "PUT", "url": f"Patient/{existing['id']}", "ifMatch": 'W/"9"'},
        },
    )
    response = client.post("", json=bundle)
    assert response.status_code == 412
    assert table_counts(db) == before


def test_transaction_order_delete_then_create_then_update_then_read(client: httpx.Client) -> None:
    doomed = client.post("/Patient", json={"resourceType": "Patient"}).json()
    kept = client.post("/Patient", json={"resourceType": "Patient"}).json()
    bundle = transaction(
        # listed first but processed last: it sees the update below
        {"request": {"method": "GET", "url": f"Patient/{kept['id']}"}},
        {
            "resource": {**kept, "gender": "other"},
            "request": {"method": "PUT", "url": f"Patient/{kept['id']}"},
        },
        {"request": {"method": "DELETE", "url": f"Patient/{doomed['id']}"}},
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
    )
    result = client.post("", json=bundle).json()
    read, updated, deleted, created = result["entry"]
    assert read["resource"]["gender"] == "other"
    assert updated["response"]["status"] == "200 OK"
    assert deleted["response"]["status"] == "204 No Content"
    assert created["response"]["status"] == "201 Created"
    assert client.get(f"/Patient/{doomed['id']}").status_code == 410


def test_transaction_conditional_create_and_patch(client: httpx.Client) -> None:
    ident = {"system": "urn:test:mrn", "value": "txn-cond-1"}
    existing = client.post(
        "/Patient", json={"resourceType": "Patient", "identifier": [ident]}
    ).json()
    patch = base64.b64encode(
        json.dumps([{"op": "add", "path": "/active", "value": True}]).encode()
    ).decode()
    bundle = transaction(
        {
            "fullUrl": "urn:uuid:0c9c1d07-8b3a-4c9f-a3a4-7a6d3e4c0b11",
            "resource": {"resourceType": "Patient", "identifier": [ident]},
            "request": {
                "method": "POST",
                "url": "Patient",
                "ifNoneExist": "identifier=urn:test:mrn|txn-cond-1",
            },
        },
        post(observation("urn:uuid:0c9c1d07-8b3a-4c9f-a3a4-7a6d3e4c0b11", "x")),
        {
            "resource": {
                "resourceType": "Binary",
                "contentType": "application/json-patch+json",
                "data": patch,
            },
            "request": {"method": "PATCH", "url": f"Patient/{existing['id']}"},
        },
    )
    result = client.post("", json=bundle).json()
    cond, obs, patched = result["entry"]
    assert cond["response"]["status"] == "200 OK"
    assert cond["response"]["location"].startswith(f"Patient/{existing['id']}/")
    obs_id = obs["response"]["location"].split("/")[1]
    assert (
        client.get(f"/Observation/{obs_id}").json()["subject"]["reference"]
        == f"Patient/{existing['id']}"
    )
    assert patched["resource"]["active"] is True


def test_batch_answers_each_entry(client: httpx.Client, db: psycopg.Connection[Any]) -> None:
    existing = client.post("/Patient", json={"resourceType": "Patient"}).json()
    bundle = transaction(
        {
            "resource": {"resourceType": "Patient", "gender": "female"},
            "request": {"method": "POST", "url": "Patient"},
        },
        {
            "resource": {"resourceType": "Patient", "gender": "bogus"},
            "request": {"method": "POST", "url": "Patient"},
        },
        {"request": {"method": "GET", "url": f"Patient/{existing['id']}"}},
        {"request": {"method": "GET", "url": "Patient/missing-one"}},
        {"request": {"method": "GET", "url": "Foo/1"}},
        {"request": {"url": "Patient"}},
        kind="batch",
    )
    before = table_counts(db)
    response = client.post("", json=bundle)
    assert response.status_code == 200
    result = response.json()
    assert result["type"] == "batch-response"
    statuses = [e["response"]["status"].split()[0] for e in result["entry"]]
    assert statuses == ["201", "400", "200", "404", "404", "400"]
    assert result["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    # only the valid create landed
    assert table_counts(db) == (before[0] + 1, before[1] + 1)


def test_bundle_of_wrong_type_is_400(client: httpx.Client) -> None:
    response = client.post("", json={"resourceType": "Bundle", "type": "collection"})
    assert response.status_code == 400
    assert client.post("", json={"resourceType": "Patient"}).status_code == 400


def test_transaction_of_many_creates(client: httpx.Client) -> None:
    entries = [
        {
            "resource": {"resourceType": "Patient", "name": [{"family": f"Bulk{i}"}]},
            "request": {"method": "POST", "url": "Patient"},
        }
        for i in range(200)
    ]
    result = client.post(
        "", json=transaction(*entries), headers={"Prefer": "return=minimal"}
    ).json()
    assert len(result["entry"]) == 200
    assert all(e["response"]["status"] == "201 Created" for e in result["entry"])
    assert all("resource" not in e for e in result["entry"])
    ids = {e["response"]["location"].split("/")[1] for e in result["entry"]}
    assert len(ids) == 200


def test_batch_search_entry(client: httpx.Client) -> None:
    family = f"Batch{uuid.uuid4().hex[:8]}"
    created = client.post(
        "/Patient", json={"resourceType": "Patient", "name": [{"family": family}]}
    )
    assert created.status_code == 201
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient?name={family}"}},
            {"request": {"method": "GET", "url": "Patient?nickname=x"}},
        ],
    }
    response = client.post("", json=batch)
    assert response.status_code == 200
    found, refused = response.json()["entry"]
    assert found["response"]["status"] == "200 OK"
    assert found["resource"]["type"] == "searchset"
    assert [e["resource"]["id"] for e in found["resource"]["entry"]] == [created.json()["id"]]
    assert refused["response"]["status"].startswith("400")
