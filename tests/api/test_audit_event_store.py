"""AuditEvents through the API, now that they live in their own partitioned table: a client's
AuditEvent is stored in the partition of its `recorded` month and read back by id; searches
answer what the table can and refuse the rest with a 400 naming it (or leave it out with
`Prefer: handling=lenient`); the CapabilityStatement says exactly what works."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg

from fhir_server.storage.audit_events import window_of

EVENT = {
    "resourceType": "AuditEvent",
    "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110112"},
    "recorded": "2025-06-03T10:00:00.123+00:00",
    "agent": [{"who": {"reference": "Practitioner/p-store-1"}, "requestor": True}],
    "entity": [{"what": {"reference": "Patient/p-store-2"}}],
    "source": {"observer": {"display": "app"}},
}


def test_a_clients_event_is_stored_in_its_month_and_read_back(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    created = client.post("/AuditEvent", json=EVENT)
    assert created.status_code == 201, created.text
    event = created.json()
    window = window_of(event["id"])
    assert window is not None and window[0].isoformat().startswith("2025-06-03T10:00:00.123")
    assert client.get(f"/AuditEvent/{event['id']}").json() == event
    row = db.execute(
        "SELECT tableoid::regclass::text, patients, agents, types FROM audit_events WHERE id = %s",
        (event["id"],),
    ).fetchone()
    assert row is not None
    # no partition for June 2025 (the migration makes this month's and the next): DEFAULT
    assert row[0] in {"audit_events_default", "audit_events_2025_06"}
    assert row[1] == ["Patient/p-store-2"] and row[2] == ["Practitioner/p-store-1"]
    assert "http://dicom.nema.org/resources/ontology/DCM|110112" in row[3]
    assert db.execute(
        "SELECT count(*) FROM resources WHERE resource_type = 'AuditEvent'"
    ).fetchone() == (0,)

    def ids(params: dict[str, str]) -> list[str]:
        found = client.get("/AuditEvent", params=params)
        assert found.status_code == 200, found.text
        return [e["resource"]["id"] for e in found.json().get("entry", ())]

    assert ids({"_id": event["id"], "date": "2025-06"}) == [event["id"]]
    assert ids({"_id": event["id"], "date": "2025-07"}) == []
    assert ids({"agent": "Practitioner/p-store-1"}) == [event["id"]]
    assert ids({"patient": "Patient/p-store-2", "type": "110112"}) == [event["id"]]
    # the server's own AuditEvents of the searches above name Patient/p-store-2 too, and reach the
    # store whenever the batching writer flushes: the month keeps the client's event apart
    assert ids({"entity": "p-store-2", "date": "2025-06"}) == [event["id"]]
    assert ids({"patient": "Patient/p-store-2", "outcome": "4"}) == []
    counted = client.get(
        "/AuditEvent", params={"agent": "Practitioner/p-store-1", "_total": "accurate"}
    )
    assert counted.json()["total"] == 1


def test_what_the_store_cannot_answer_is_a_400_naming_it(client: httpx.Client) -> None:
    for params, name in (
        ({"entity-role": "1"}, "entity-role"),
        ({"agent-name": "x"}, "agent-name"),
        ({"_include": "AuditEvent:agent"}, "_include"),
        ({"_sort": "outcome"}, "outcome"),
    ):
        refused = client.get("/AuditEvent", params=params)
        assert refused.status_code == 400, (params, refused.text)
        outcome = refused.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert name in outcome["issue"][0]["diagnostics"]
    lenient = client.get(
        "/AuditEvent",
        params={"entity-role": "1", "_count": "1"},
        headers={"Prefer": "handling=lenient"},
    )
    assert lenient.status_code == 200, lenient.text
    self_link = next(link["url"] for link in lenient.json()["link"] if link["relation"] == "self")
    assert "entity-role" not in self_link
    has = client.get("/Patient", params={"_has:AuditEvent:entity:agent": "Practitioner/1"})
    assert has.status_code == 400 and "_has:AuditEvent" in has.text
    revinclude = client.get("/Patient", params={"_revinclude": "AuditEvent:entity"})
    assert revinclude.status_code == 400 and "AuditEvent" in revinclude.text


def test_the_capability_statement_names_what_works(client: httpx.Client) -> None:
    statement = client.get("/metadata").json()
    (audit,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "AuditEvent"]
    assert {p["name"] for p in audit["searchParam"]} == {
        "_id",
        "_lastUpdated",
        "_tag",
        "action",
        "agent",
        "date",
        "entity",
        "outcome",
        "patient",
        "policy",
        "subtype",
        "type",
    }
    assert audit["searchInclude"] == [] and audit["searchRevInclude"] == []
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert not any(i.startswith("AuditEvent:") for i in patient["searchRevInclude"])
