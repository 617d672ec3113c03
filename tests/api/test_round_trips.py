"""Read, modify, write on FHIR: a PUT of the resource exactly as GET (or a search) returned it,
`meta.versionId` and `meta.lastUpdated` included, works; those are the server's to set, and the
server sets them whatever the body says (R4 http.html#update: `If-Match` is how a client asks
for a version). The Patient API's own round trip is in tests/api/test_patient_api.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg


def test_get_modify_put_with_meta_as_returned(client: httpx.Client) -> None:
    created = client.post("/Patient", json={"resourceType": "Patient", "gender": "female"}).json()
    url = f"/Patient/{created['id']}"
    got = client.get(url)
    resource = {**got.json(), "birthDate": "1990-01-01"}
    assert resource["meta"]["versionId"] == "1" and resource["meta"]["lastUpdated"]
    put = client.put(url, json=resource, headers={"If-Match": got.headers["ETag"]})
    assert put.status_code == 200, put.text
    assert put.json()["meta"]["versionId"] == "2"
    assert put.json()["meta"]["lastUpdated"] > resource["meta"]["lastUpdated"]
    # and again from what the search returned
    found = client.get("/Patient", params={"_id": created["id"]}).json()["entry"][0]["resource"]
    again = client.put(url, json={**found, "gender": "male"})
    assert again.status_code == 200, again.text
    assert again.json()["meta"]["versionId"] == "3" and again.json()["gender"] == "male"


def test_meta_version_and_time_in_the_body_are_the_servers_to_set(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    created = client.post("/Patient", json={"resourceType": "Patient"}).json()
    url = f"/Patient/{created['id']}"
    long_ago = "2001-01-01T00:00:00Z"
    put = client.put(
        url,
        json={**created, "gender": "other", "meta": {"versionId": "99", "lastUpdated": long_ago}},
    )
    assert put.status_code == 200, put.text
    meta = put.json()["meta"]
    assert meta["versionId"] == "2"
    assert datetime.fromisoformat(meta["lastUpdated"]) > datetime.now(UTC) - timedelta(hours=1)
    row = db.execute(
        "SELECT version_id, content->'meta' FROM resources WHERE resource_type = 'Patient' "
        "AND id = %s",
        (created["id"],),
    ).fetchone()
    assert row is not None and row[0] == 2 and row[1]["versionId"] == "2"
    # a stale version is refused only where the client asks for it: `If-Match`
    stale = client.put(url, json={**created, "gender": "male"}, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
