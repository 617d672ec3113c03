"""`fhir-server reindex` rebuilds the search index from the stored resources."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import psycopg

from fhir_server.services.workflows.reindex import reindex
from fhir_server.settings import Settings
from fhir_server.storage.tables import SEARCH_TABLES

# AuditEvents of the test's own requests land at any time: the counts leave them out
COUNT_INDEX = "SELECT count(*) FROM {} WHERE resource_type <> 'AuditEvent'"


def test_reindex_restores_a_lost_index(
    client: httpx.Client, database_url: str, db: psycopg.Connection[Any]
) -> None:
    family = f"Reindex{uuid.uuid4().hex[:8]}"
    created = client.post(
        "/Patient",
        json={"resourceType": "Patient", "name": [{"family": family}], "gender": "other"},
    )
    assert created.status_code == 201
    pid = created.json()["id"]

    def found() -> list[str]:
        bundle = client.get(f"/Patient?name={family}&gender=other").json()
        return [e["resource"]["id"] for e in bundle.get("entry", [])]

    assert found() == [pid]
    rows_before = {
        name: db.execute(COUNT_INDEX.format(table.name)).fetchone()
        for name, table in SEARCH_TABLES.items()
    }
    for table in SEARCH_TABLES.values():
        db.execute(f"DELETE FROM {table.name} WHERE id = %s", (pid,))  # noqa: S608
    assert found() == []

    count = asyncio.run(reindex(Settings(), database_url, batch=50))

    # AuditEvents of the requests may land while it runs: count the rest exactly
    live = db.execute(
        "SELECT count(*) FROM resources WHERE NOT deleted AND resource_type <> 'AuditEvent'"
    ).fetchone()
    assert live is not None and count >= live[0]
    assert found() == [pid]
    rows_after = {
        name: db.execute(COUNT_INDEX.format(table.name)).fetchone()
        for name, table in SEARCH_TABLES.items()
    }
    assert rows_after == rows_before


def test_the_reindex_command(database_url: str, monkeypatch: Any) -> None:
    from fhir_server.cli import main

    monkeypatch.setenv("POSTGRES_URL", database_url)
    assert main(["reindex"]) == 0
