"""Concurrent updates against real PostgreSQL: If-Match lets exactly one win; without it none is lost."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg

from tests.support.servers import LiveServer
from tests.support.tokens import auth


def new_patient(live_server: LiveServer) -> tuple[str, dict[str, Any]]:
    """The FHIR base of the server, and a Patient created there."""
    base = f"{live_server.origin}/fhir"
    created = httpx.post(f"{base}/Patient", json={"resourceType": "Patient"}, headers=auth()).json()
    return base, created


def test_same_if_match_exactly_one_wins(
    live_server: LiveServer, db: psycopg.Connection[Any]
) -> None:
    base, created = new_patient(live_server)
    id = created["id"]
    for round_ in range(5):
        version = round_ + 1

        def attempt(i: int, version: int = version) -> int:
            body = {**created, "gender": ["male", "female", "other", "unknown"][i % 4]}
            return httpx.put(
                f"{base}/Patient/{id}",
                json=body,
                headers={"If-Match": f'W/"{version}"', **auth()},
                timeout=30,
            ).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(attempt, range(8)))
        assert sorted(statuses) == [200] + [412] * 7
    rows = db.execute(
        "SELECT version_id FROM resource_history WHERE resource_type='Patient' AND id=%s ORDER BY 1",
        (id,),
    ).fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_without_if_match_every_update_lands(
    live_server: LiveServer, db: psycopg.Connection[Any]
) -> None:
    base, created = new_patient(live_server)
    id = created["id"]

    def attempt(i: int) -> int:
        body = {**created, "name": [{"family": f"Writer{i}"}]}
        return httpx.put(f"{base}/Patient/{id}", json=body, timeout=30, headers=auth()).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(attempt, range(24)))
    assert statuses == [200] * 24
    rows = db.execute(
        "SELECT version_id, content->'name'->0->>'family' FROM resource_history "
        "WHERE resource_type='Patient' AND id=%s ORDER BY 1",
        (id,),
    ).fetchall()
    assert [r[0] for r in rows] == list(range(1, 26))
    writers = {r[1] for r in rows[1:]}
    assert writers == {f"Writer{i}" for i in range(24)}
    current = httpx.get(f"{base}/Patient/{id}", headers=auth()).json()
    assert current["meta"]["versionId"] == "25"


def test_concurrent_update_as_create_makes_one_resource(
    live_server: LiveServer, db: psycopg.Connection[Any]
) -> None:
    base = f"{live_server.origin}/fhir"
    id = "racing-create-1"

    def attempt(i: int) -> int:
        return httpx.put(
            f"{base}/Patient/{id}",
            json={"resourceType": "Patient", "id": id},
            timeout=30,
            headers=auth(),
        ).status_code

    with ThreadPoolExecutor(6) as pool:
        statuses = sorted(pool.map(attempt, range(6)))
    assert statuses == [200] * 5 + [201]
    rows = db.execute(
        "SELECT version_id FROM resource_history WHERE resource_type='Patient' AND id=%s ORDER BY 1",
        (id,),
    ).fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6]
