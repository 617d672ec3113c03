"""The write kill-switch: every write answers 503 (and writes nothing) while reads go on."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg

from fhir_server.settings import Settings
from tests.support.servers import LiveServer
from tests.support.tokens import auth
from tests.support.world import snapshot


def test_writes_answer_503_while_reads_go_on(
    database_url: str, client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    existing = client.post("/Patient", json={"resourceType": "Patient"}).json()
    with LiveServer(Settings(writes_disabled=True), database_url) as server:
        base = f"{server.origin}/fhir"
        before = snapshot(db)
        writes = [
            httpx.post(f"{base}/Patient", json={"resourceType": "Patient"}, headers=auth()),
            httpx.put(f"{base}/Patient/{existing['id']}", json=existing, headers=auth()),
            httpx.delete(f"{base}/Patient/{existing['id']}", headers=auth()),
            httpx.post(
                base, json={"resourceType": "Bundle", "type": "transaction"}, headers=auth()
            ),
            httpx.post(f"{server.origin}/api/v1/patients", json={}, headers=auth()),
        ]
        for response in writes:
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] == "300"
        assert snapshot(db) == before
        assert httpx.get(f"{base}/Patient/{existing['id']}", headers=auth()).status_code == 200
        search = httpx.post(
            f"{base}/Patient/_search",
            data={"_id": existing["id"]},
            headers=auth(),
        )
        assert search.status_code == 200 and search.json()["entry"]
        mutation = httpx.post(
            f"{server.origin}/graphql",
            json={"query": 'mutation { removeDependent(dependentId: "x") { success } }'},
            headers=auth("Patient/" + existing["id"], "user/*.cruds"),
        ).json()
        assert mutation["errors"] and "switched off" in mutation["errors"][0]["message"]
