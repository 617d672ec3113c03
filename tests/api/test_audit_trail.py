"""The audit trail through a real server: allowed reads are stored by the writer process, what is
pending is written when the server stops, and events carry references, never demographics."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg

from fhir_server.settings import Settings
from tests.conftest import LiveServer, auth


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
        "SELECT content FROM resources WHERE resource_type = 'AuditEvent'"
        " AND content->'agent'->0->'who'->>'reference' = %s",
        (patient,),
    ).fetchall()
    assert len(rows) == 1
    event = rows[0][0]
    assert event["subtype"][0]["code"] == "read" and event["outcome"] == "0"
    assert {e["what"]["reference"] for e in event["entity"]} == {patient}
    creation = db.execute(
        "SELECT content::text FROM resources WHERE resource_type = 'AuditEvent'"
        " AND content->'entity'->0->'what'->>'reference' = %s",
        (patient,),
    ).fetchall()
    assert creation, "the create was audited too"
    assert all("Zebulonovich" not in text for (text,) in creation)
