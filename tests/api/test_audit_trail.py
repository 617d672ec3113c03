"""The audit trail through a real server: allowed reads are stored by the writer process, what is
pending is written when the server stops, and events carry references, never demographics."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg

from fhir_server.settings import Settings
from tests.support.servers import LiveServer
from tests.support.tokens import auth


def test_pending_events_are_written_when_the_server_stops(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    with LiveServer(Settings(), database_url) as server:
        base = f"{server.origin}/fhir"
        created = httpx.post(
            f"{base}/Patient",
            json={"resourceType": "Patient", "name": [{"family": "Zebulonovich"}]},
            headers=auth(),
        ).json()
        patient = f"Patient/{created['id']}"
        reader = auth(patient, "user/*.rs")
        assert httpx.get(f"{base}/{patient}", headers=reader).status_code == 200
    # the server has stopped: the read's event was handed to the writer and stored
    rows = db.execute(
        "SELECT content FROM audit_events WHERE true"
        " AND content->'agent'->0->'who'->>'reference' = %s",
        (patient,),
    ).fetchall()
    assert len(rows) == 1
    event = rows[0][0]
    assert event["subtype"][0]["code"] == "read" and event["outcome"] == "0"
    assert {e["what"]["reference"] for e in event["entity"]} == {patient}
    creation = db.execute(
        "SELECT content::text FROM audit_events WHERE true"
        " AND content->'entity'->0->'what'->>'reference' = %s",
        (patient,),
    ).fetchall()
    assert creation, "the create was audited too"
    assert all("Zebulonovich" not in text for (text,) in creation)


def test_the_audit_trail_is_append_only(client: httpx.Client, db: psycopg.Connection[Any]) -> None:
    created = client.post(
        "/AuditEvent",
        json={
            "resourceType": "AuditEvent",
            "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110112"},
            "recorded": "2026-01-01T00:00:00Z",
            "agent": [{"who": {"display": "an app"}, "requestor": True}],
            "source": {"observer": {"display": "app"}},
        },
    )
    assert created.status_code == 201, created.text  # System clients may add events
    event = created.json()
    path = f"/AuditEvent/{event['id']}"
    for response in (
        client.put(path, json={**event, "outcome": "8"}),
        client.patch(
            path,
            json=[{"op": "add", "path": "/outcome", "value": "8"}],
            headers={"Content-Type": "application/json-patch+json"},
        ),
        client.delete(path),
    ):
        assert response.status_code == 403, response.text
    assert client.get(path).json() == event
    # written once: version 1 is all its history, and no history row repeats it
    assert client.get(f"{path}/_history/1").json() == event
    assert client.get(f"{path}/_history/2").status_code == 404
    history = client.get(f"{path}/_history").json()
    assert history["total"] == 1 and history["entry"][0]["resource"] == event
    rows = db.execute(
        "SELECT count(*) FROM resource_history WHERE resource_type = 'AuditEvent'"
    ).fetchone()
    assert rows == (0,)
