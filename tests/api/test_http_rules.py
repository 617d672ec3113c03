"""Formats, media types, body limits, validation errors and server faults, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from fhir_server.settings import Settings
from tests.support.servers import LiveServer
from tests.support.tokens import auth


def count_patients(db: psycopg.Connection[Any]) -> int:
    row = db.execute(
        "SELECT count(*) FROM resource_history WHERE resource_type='Patient'"
    ).fetchone()
    assert row is not None
    return int(row[0])


def post_as(client: httpx.Client, media: str) -> httpx.Response:
    """POST a minimal Patient with this Content-Type."""
    return client.post(
        "/Patient", content=b'{"resourceType": "Patient"}', headers={"Content-Type": media}
    )


def test_invalid_json_is_400_and_stores_nothing(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    before = count_patients(db)
    response = client.post(
        "/Patient",
        content=b'{"resourceType": "Patient", ',
        headers={"Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["issue"][0]["diagnostics"]
    assert count_patients(db) == before


@pytest.mark.parametrize(
    "media", ["application/fhir+xml", "text/plain", "application/x-www-form-urlencoded"]
)
def test_wrong_content_type_is_415(client: httpx.Client, media: str) -> None:
    response = post_as(client, media)
    assert response.status_code == 415
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    "media", ["application/fhir+json", "application/json", "application/fhir+json; charset=utf-8"]
)
def test_json_content_types_are_accepted(client: httpx.Client, media: str) -> None:
    response = post_as(client, media)
    assert response.status_code == 201


@pytest.mark.parametrize(
    "accept", ["application/fhir+xml", "application/xml", "text/xml", "text/turtle"]
)
def test_xml_accept_is_406(client: httpx.Client, accept: str) -> None:
    response = client.get("/metadata", headers={"Accept": accept})
    assert response.status_code == 406
    assert "JSON" in response.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("fmt", ["xml", "application/fhir+xml", "text/xml"])
def test_format_xml_is_406(client: httpx.Client, fmt: str) -> None:
    response = client.get("/metadata", params={"_format": fmt})
    assert response.status_code == 406


@pytest.mark.parametrize("fmt", ["json", "application/json", "application/fhir+json"])
def test_format_json_is_served(client: httpx.Client, fmt: str) -> None:
    response = client.get("/metadata", params={"_format": fmt})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "accept", ["application/fhir+json", "application/json", "*/*", "text/html, */*;q=0.1"]
)
def test_json_accept_is_served(client: httpx.Client, accept: str) -> None:
    assert client.get("/metadata", headers={"Accept": accept}).status_code == 200


def test_validation_reports_every_problem_with_its_location(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    before = count_patients(db)
    body = {
        "resourceType": "Patient",
        "birthDate": "1980-13-45",
        "gender": "robot",
        "name": [{"family": "Doe", "nickname": "JD"}],
        "favouriteColour": "blue",
    }
    response = client.post("/Patient", json=body)
    assert response.status_code == 400
    issues = response.json()["issue"]
    locations = {e for issue in issues for e in issue.get("expression", [])}
    assert "Patient.birthDate" in locations
    assert "Patient.gender" in locations
    assert any("favouriteColour" in e for e in locations)
    assert any("nickname" in e for e in locations)
    assert all(issue["severity"] == "error" for issue in issues)
    assert count_patients(db) == before


def test_non_object_body_is_400(client: httpx.Client) -> None:
    response = client.post("/Patient", json=[1, 2, 3])
    assert response.status_code == 400


def test_body_over_the_limit_is_413(database_url: str) -> None:
    with (
        LiveServer(Settings(max_body_bytes=2000), database_url) as server,
        httpx.Client(base_url=f"{server.origin}/fhir", headers=auth()) as small,
    ):
        big = {"resourceType": "Patient", "name": [{"family": "x" * 5000}]}
        response = small.post("/Patient", json=big)
        assert response.status_code == 413
        assert response.json()["resourceType"] == "OperationOutcome"

        def chunks() -> Iterator[bytes]:
            # no Content-Length: the limit is enforced while reading
            yield b'{"resourceType": "Patient", "name": [{"family": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}]}'

        response = small.post(
            "/Patient", content=chunks(), headers={"Content-Type": "application/fhir+json"}
        )
        assert response.status_code == 413
        assert small.post("/Patient", json={"resourceType": "Patient"}).status_code == 201


def test_unknown_path_is_404_operation_outcome(client: httpx.Client) -> None:
    response = client.get("/Patient/1/2/3/4")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


def test_server_fault_is_500_without_internals(empty_database: str) -> None:
    # A server pointed at a database without our schema fails inside SQL: the client sees a plain 500.
    with (
        LiveServer(Settings(), empty_database) as server,
        httpx.Client(base_url=f"{server.origin}/fhir", headers=auth()) as c,
    ):
        response = c.get("/Patient/1")
        assert response.status_code == 500
        body = response.json()
        assert body["issue"] == [
            {"severity": "error", "code": "exception", "diagnostics": "internal server error"}
        ]
        assert "postgres" not in response.text.lower()


def test_nul_characters_are_400_and_store_nothing(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    """PostgreSQL text and JSON cannot hold NUL: a body, search or key with one is the client's
    error, never a server fault (schemathesis found these on the JSON APIs)."""
    before = count_patients(db)
    body = {"resourceType": "Patient", "name": [{"family": "Nul\x00son"}]}
    for response in (
        client.post("/Patient", json=body),
        client.post(
            "/",
            json={
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [{"resource": body, "request": {"method": "POST", "url": "Patient"}}],
            },
        ),
    ):
        assert response.status_code == 400, response.text
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert "NUL" in outcome["issue"][0]["diagnostics"]
    # a string that merely reads `\u0000` (an escaped backslash) is fine
    fine = client.post("/Patient", json={"resourceType": "Patient", "name": [{"text": "\\u0000"}]})
    assert fine.status_code == 201, fine.text
    assert count_patients(db) == before + 1
    for params in ({"family": "Nul\x00son"}, {"na\x00me": "x"}):
        search = client.get("/Patient", params=params)
        assert search.status_code == 400, search.text
        assert search.json()["issue"][0]["code"] == "value"


def test_an_overlong_idempotency_key_is_400(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    before = count_patients(db)
    response = client.post(
        "/Patient", json={"resourceType": "Patient"}, headers={"Idempotency-Key": "k" * 256}
    )
    assert response.status_code == 400, response.text
    assert "Idempotency-Key" in response.json()["issue"][0]["diagnostics"]
    assert count_patients(db) == before
    ok = client.post(
        "/Patient", json={"resourceType": "Patient"}, headers={"Idempotency-Key": "k" * 255}
    )
    assert ok.status_code == 201


@pytest.mark.parametrize("id", ["a" * 65, "a_b", "a%20b", "a%00b", "%E2%9C%93"])
def test_a_read_of_an_id_no_resource_can_have_is_400(client: httpx.Client, id: str) -> None:
    """A read of an id over 64 characters or with characters an id cannot hold is a 400 naming
    it, as an update of such an id is (it used to fall to the write routes: a 405)."""
    response = client.get(f"/Patient/{id}")
    assert response.status_code == 400, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "value"
    assert "is not a valid resource id" in outcome["issue"][0]["diagnostics"]
    assert client.put(f"/Patient/{id}", json={"resourceType": "Patient"}).status_code == 400


@pytest.mark.parametrize("segment", ["_search", "$everything"])
def test_get_of_an_endpoint_that_takes_another_method_is_405(
    client: httpx.Client, segment: str
) -> None:
    response = client.get(f"/Patient/{segment}")
    assert response.status_code == 405
    assert response.json()["resourceType"] == "OperationOutcome"
