"""A client's `id` on every create path (R4 http.html#create: the server ignores it), the
references to a created entry's full URL whatever form it takes, and the Bundle rules bdl-7
(unique full URLs), bdl-8 (no version in a full URL) and the transaction rule that no resource is
written twice."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg

from tests.support.servers import LiveServer
from tests.support.tokens import auth
from tests.support.world import snapshot


def transaction(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def post(resource: dict[str, Any], full_url: str | None = None, **request: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], **request},
    }
    if full_url is not None:
        entry["fullUrl"] = full_url
    return entry


def observation(subject: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "weight"},
        "subject": {"reference": subject},
        **extra,
    }


def stored_ids(db: psycopg.Connection[Any], rtype: str, id: str) -> int:
    row = db.execute(
        "SELECT count(*) FROM resources WHERE resource_type=%s AND id=%s", (rtype, id)
    ).fetchone()
    assert row is not None
    return int(row[0])


def location_id(entry: dict[str, Any]) -> str:
    return str(entry["response"]["location"].split("/")[1])


def refused(
    client: httpx.Client, db: psycopg.Connection[Any], bundle: dict[str, Any], status: int = 400
) -> dict[str, Any]:
    """Post a Bundle that must be refused with this status and change nothing: its first issue."""
    before = snapshot(db)
    response = client.post("", json=bundle)
    assert response.status_code == status, response.text
    assert snapshot(db) == before
    issue: dict[str, Any] = response.json()["issue"][0]
    return issue


# --- the client's id on a create --------------------------------------------------------------


def test_create_ignores_any_client_id_even_one_that_is_not_an_id(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    for client_id in ("synthea-like-" + uuid.uuid4().hex, "x" * 80, "not an id!"):
        response = client.post("/Patient", json={"resourceType": "Patient", "id": client_id})
        assert response.status_code == 201, response.text
        assert response.json()["id"] != client_id
        assert stored_ids(db, "Patient", client_id[:64]) == 0


def test_conditional_create_ignores_the_client_id(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    value = uuid.uuid4().hex
    body = {
        "resourceType": "Patient",
        "id": f"client-{value}",
        "identifier": [{"system": "urn:test:mrn", "value": value}],
    }
    headers = {"If-None-Exist": f"identifier=urn:test:mrn|{value}"}
    created = client.post("/Patient", json=body, headers=headers)
    assert created.status_code == 201, created.text
    assert created.json()["id"] != f"client-{value}"
    again = client.post("/Patient", json=body, headers=headers)
    assert again.status_code == 200
    assert again.json()["id"] == created.json()["id"]
    assert stored_ids(db, "Patient", f"client-{value}") == 0


def test_synthea_style_transaction_with_client_ids_on_post_entries(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    # Synthea: urn:uuid full URLs, and the same uuid as the resource's id
    patient, obs = uuid.uuid4(), uuid.uuid4()
    bundle = transaction(
        post({"resourceType": "Patient", "id": str(patient)}, f"urn:uuid:{patient}"),
        post(observation(f"urn:uuid:{patient}", id=str(obs)), f"urn:uuid:{obs}"),
    )
    for _ in range(2):  # twice: the client ids never collide with the first load
        response = client.post("", json=bundle)
        assert response.status_code == 200, response.text
        created, measured = response.json()["entry"]
        assert location_id(created) != str(patient)
        assert location_id(measured) != str(obs)
        stored = client.get(f"/Observation/{location_id(measured)}").json()
        assert stored["subject"] == {"reference": f"Patient/{location_id(created)}"}
    assert stored_ids(db, "Patient", str(patient)) == 0


def test_batch_post_entries_ignore_the_client_id(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    chosen = f"batch-{uuid.uuid4().hex[:12]}"
    bundle = transaction(post({"resourceType": "Patient", "id": chosen}), kind="batch")
    response = client.post("", json=bundle)
    assert response.status_code == 200, response.text
    [entry] = response.json()["entry"]
    assert entry["response"]["status"] == "201 Created"
    assert location_id(entry) != chosen
    assert stored_ids(db, "Patient", chosen) == 0


def test_absolute_full_url_with_the_client_id_rewrites_its_references(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    # full URLs on a foreign base carrying the client's ids: a relative `Patient/p1` in an entry
    # on the same base means that entry, and so does the full URL itself
    base = "http://example.org/fhir"
    p1 = f"p1-{uuid.uuid4().hex[:8]}"
    bundle = transaction(
        post({"resourceType": "Patient", "id": p1}, f"{base}/Patient/{p1}"),
        post(observation(f"Patient/{p1}", id="o1"), f"{base}/Observation/o1"),
        post(observation(f"{base}/Patient/{p1}"), f"urn:uuid:{uuid.uuid4()}"),
    )
    response = client.post("", json=bundle)
    assert response.status_code == 200, response.text
    created, relative, absolute = response.json()["entry"]
    new = f"Patient/{location_id(created)}"
    assert location_id(created) != p1
    for entry in (relative, absolute):
        stored = client.get(f"/Observation/{location_id(entry)}").json()
        assert stored["subject"] == {"reference": new}
    assert stored_ids(db, "Patient", p1) == 0


def test_relative_reference_from_another_base_is_not_rewritten(client: httpx.Client) -> None:
    # `Patient/p2` in an entry with a urn:uuid full URL resolves against this server, not
    # against the foreign base the created Patient's full URL names
    p2 = f"p2-{uuid.uuid4().hex[:8]}"
    bundle = transaction(
        post({"resourceType": "Patient", "id": p2}, f"http://example.org/fhir/Patient/{p2}"),
        post(observation(f"Patient/{p2}"), f"urn:uuid:{uuid.uuid4()}"),
    )
    response = client.post("", json=bundle)
    assert response.status_code == 200, response.text
    _, measured = response.json()["entry"]
    stored = client.get(f"/Observation/{location_id(measured)}").json()
    assert stored["subject"] == {"reference": f"Patient/{p2}"}


def test_full_url_on_this_server_with_the_client_id_rewrites_references(
    client: httpx.Client,
) -> None:
    base = str(client.base_url).rstrip("/")
    p3 = f"p3-{uuid.uuid4().hex[:8]}"
    bundle = transaction(
        post({"resourceType": "Patient", "id": p3}, f"{base}/Patient/{p3}"),
        post(observation(f"Patient/{p3}"), f"urn:uuid:{uuid.uuid4()}"),
        post(observation(f"Patient/{p3}")),
    )
    response = client.post("", json=bundle)
    assert response.status_code == 200, response.text
    created, *observations = response.json()["entry"]
    for entry in observations:
        stored = client.get(f"/Observation/{location_id(entry)}").json()
        assert stored["subject"] == {"reference": f"Patient/{location_id(created)}"}


def test_idempotency_key_replays_a_transaction_with_client_ids(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    patient = uuid.uuid4()
    bundle = transaction(
        post({"resourceType": "Patient", "id": str(patient)}, f"urn:uuid:{patient}"),
        post(observation(f"urn:uuid:{patient}")),
    )
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = client.post("", json=bundle, headers=key)
    assert first.status_code == 200, first.text
    before = snapshot(db)
    again = client.post("", json=bundle, headers=key)
    assert again.status_code == 200
    assert again.json() == first.json()
    assert snapshot(db) == before
    created = client.post("/Patient", json={"resourceType": "Patient", "id": "k"}, headers=key)
    assert created.status_code == 201  # a key is per route: this is another request
    replayed = client.post("/Patient", json={"resourceType": "Patient", "id": "k"}, headers=key)
    assert replayed.json()["id"] == created.json()["id"] != "k"


def test_post_entry_naming_an_id_in_its_url_is_400(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    bundle = transaction(
        {
            "resource": {"resourceType": "Patient", "id": "p1"},
            "request": {"method": "POST", "url": "Patient/p1"},
        }
    )
    assert refused(client, db, bundle)["expression"] == ["Bundle.entry[0]"]


# --- bdl-7, bdl-8 and resources written twice -------------------------------------------------


def test_duplicate_full_urls_are_refused_bdl_7(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    same = f"urn:uuid:{uuid.uuid4()}"
    for kind in ("transaction", "batch"):
        bundle = transaction(
            post({"resourceType": "Patient"}, same),
            post(observation(same)),
            post({"resourceType": "Patient", "gender": "male"}, same),
            kind=kind,
        )
        issue = refused(client, db, bundle)
        assert issue["expression"] == ["Bundle.entry[2].fullUrl"]
        assert f"`{same}`" in issue["diagnostics"]
        assert "bdl-7" in issue["diagnostics"]


def test_same_full_url_with_different_versions_is_allowed_by_bdl_7(client: httpx.Client) -> None:
    full_url = f"urn:uuid:{uuid.uuid4()}"
    bundle = transaction(
        post({"resourceType": "Patient", "meta": {"versionId": "1"}}, full_url),
        post({"resourceType": "Patient", "meta": {"versionId": "2"}}, full_url),
        kind="batch",
    )
    response = client.post("", json=bundle)
    assert response.status_code == 200, response.text


def test_versioned_full_url_is_refused_bdl_8(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    bundle = transaction(
        post({"resourceType": "Patient"}, "http://example.org/Patient/1/_history/2")
    )
    assert refused(client, db, bundle)["expression"] == ["Bundle.entry[0].fullUrl"]


def test_transaction_writing_one_resource_twice_is_refused(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    existing = client.post("/Patient", json={"resourceType": "Patient"}).json()
    ref = f"Patient/{existing['id']}"
    pairs = [
        ({"method": "PUT", "url": ref}, {"method": "DELETE", "url": ref}),
        ({"method": "PUT", "url": ref}, {"method": "PUT", "url": ref}),
    ]
    for first, second in pairs:
        bundle = transaction(
            {"resource": existing, "request": first},
            {"resource": existing, "request": second},
        )
        assert f"`{ref}`" in refused(client, db, bundle)["diagnostics"]


# --- conditional references (Synthea names practitioners and organizations this way) ----------


def test_transaction_resolves_conditional_references(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    npi = uuid.uuid4().hex
    doctor = client.post(
        "/Practitioner",
        json={"resourceType": "Practitioner", "identifier": [{"system": "urn:npi", "value": npi}]},
    ).json()
    patient = uuid.uuid4()
    reference = f"Practitioner?identifier=urn:npi|{npi}"
    bundle = transaction(
        post({"resourceType": "Patient", "id": str(patient)}, f"urn:uuid:{patient}"),
        post(observation(f"urn:uuid:{patient}", performer=[{"reference": reference}])),
        post(observation(f"urn:uuid:{patient}", performer=[{"reference": reference}])),
    )
    response = client.post("", json=bundle)
    assert response.status_code == 200, response.text
    for entry in response.json()["entry"][1:]:
        stored = client.get(f"/Observation/{location_id(entry)}").json()
        assert stored["performer"] == [{"reference": f"Practitioner/{doctor['id']}"}]


def test_unresolvable_conditional_reference_fails_the_transaction(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    twice = uuid.uuid4().hex
    for _ in range(2):
        client.post(
            "/Practitioner",
            json={
                "resourceType": "Practitioner",
                "identifier": [{"system": "urn:npi", "value": twice}],
            },
        )
    for reference in (
        f"Practitioner?identifier=urn:npi|{uuid.uuid4().hex}",
        f"Practitioner?identifier=urn:npi|{twice}",
    ):
        bundle = transaction(
            post({"resourceType": "Patient"}),
            post(observation("Patient/x", performer=[{"reference": reference}])),
        )
        assert refused(client, db, bundle, 412)["expression"] == ["Bundle.entry[1]"]


def test_conditional_reference_never_resolves_to_a_hidden_resource(
    live_server: LiveServer, client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    mine = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    theirs = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    headers = auth(f"Patient/{mine}", "user/*.cruds")
    before = snapshot(db)
    with httpx.Client(base_url=f"{live_server.origin}/fhir", headers=headers) as me:
        hidden = transaction(post(observation(f"Patient?_id={theirs}")))
        response = me.post("", json=hidden)
        assert response.status_code == 412, response.text
        assert snapshot(db) == before
        own = me.post("", json=transaction(post(observation(f"Patient?_id={mine}"))))
        assert own.status_code == 200, own.text
        [entry] = own.json()["entry"]
        assert me.get(f"/Observation/{location_id(entry)}").json()["subject"] == {
            "reference": f"Patient/{mine}"
        }
