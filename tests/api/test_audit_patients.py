"""Whose record a read is of: every reading interaction's AuditEvent names the patients whose
compartments the resources it returned were stored in (read, vread, history, search and what a
search includes), taken from the compartments the security predicate checked."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import psycopg


def _created(client: httpx.Client, resource: dict[str, Any]) -> str:
    made = client.post(f"/{resource['resourceType']}", json=resource)
    assert made.status_code == 201, made.text
    return f"{resource['resourceType']}/{made.json()['id']}"


def _reads_naming(
    db: psycopg.Connection[Any], patient: str, expected: int
) -> list[tuple[str, list[str]]]:
    """(interaction, patients) of the stored reading and searching events that name `patient`, once there are
    `expected` of them (the writer process stores allowed reads in batches)."""
    rows: list[tuple[str, list[str]]] = []
    for _ in range(300):
        rows = db.execute(
            "SELECT content->'subtype'->0->>'code', patients FROM audit_events"
            " WHERE patients @> ARRAY[%s]::text[] AND action IN ('R', 'E')",
            (patient,),
        ).fetchall()
        if len(rows) >= expected:
            break
        time.sleep(0.1)
    return rows


def test_each_read_names_the_patients_of_what_it_returned(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    tag = uuid.uuid4().hex[:8]
    subject = _created(client, {"resourceType": "Patient", "name": [{"family": f"S{tag}"}]})
    performer = _created(client, {"resourceType": "Patient", "name": [{"family": f"P{tag}"}]})
    observation = _created(
        client,
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": f"shared {tag}"},
            "subject": {"reference": subject},
            "performer": [{"reference": performer}],
        },
    )
    obs_id = observation.split("/")[1]
    for path, params in (
        (f"/{observation}", {}),
        (f"/{observation}/_history/1", {}),
        (f"/{observation}/_history", {}),
        ("/Observation", {"_id": obs_id}),
        ("/Patient", {"_id": subject.split("/")[1], "_revinclude": "Observation:subject"}),
    ):
        answer = client.get(path, params=params)
        assert answer.status_code == 200, (path, answer.text)

    events = _reads_naming(db, subject, 5)
    assert sorted(code for code, _ in events) == sorted(
        ["read", "read", "history-instance", "search-type", "search-type"]  # a vread is a read
    ), events
    # the Patient search matched the subject only; the Observation it included is the
    # performer's too, so its event names both, as every other one does
    for code, patients in events:
        assert sorted(patients) == sorted([subject, performer]), (code, patients)
