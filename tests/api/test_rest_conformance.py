"""What outside testing of the REST layer found (2026-12), each as the class it stands for:
every `Prefer` line counts, a history entry says what its write was answered, `HEAD` wherever
`GET` works and a 405's `Allow` read from the route table, and a transaction's `fullUrl`s
replaced wherever the Bundle links to them."""

from __future__ import annotations

import uuid

import httpx

from tests.api.test_crud import create
from tests.support.resources import patient

# --- Prefer: several field lines are one list (RFC 7240 2) ---------------------------------------


def test_every_prefer_line_counts(client: httpx.Client) -> None:
    two_lines = [("Prefer", "return=minimal"), ("Prefer", "handling=lenient")]
    searched = client.get("/Patient?nickname=x", headers=two_lines)
    assert searched.status_code == 200, searched.text
    assert searched.json()["type"] == "searchset"
    created = client.post("/Patient", json=patient("Prefer", "Lines"), headers=two_lines)
    assert created.status_code == 201
    assert created.content == b""  # return=minimal, though it came first
    reversed_lines = [("Prefer", "handling=lenient"), ("Prefer", "return=OperationOutcome")]
    outcome = client.post("/Patient", json=patient("Prefer", "Lines"), headers=reversed_lines)
    assert outcome.status_code == 201
    assert outcome.json()["resourceType"] == "OperationOutcome"


def test_preference_names_are_case_insensitive(client: httpx.Client) -> None:
    assert client.get("/Patient?nickname=x", headers={"Prefer": "HANDLING=lenient"}).is_success
    # values are compared exactly (RFC 7240 2): an unknown value, so strict handling
    strict = client.get("/Patient?nickname=x", headers={"Prefer": "handling=LENIENT"})
    assert strict.status_code == 400


# --- history: 201 for the version that created the resource -------------------------------------


def statuses(client: httpx.Client, url: str) -> list[tuple[str, str]]:
    bundle = client.get(url, params={"_count": 100}).json()
    return [(e["request"]["method"], e["response"]["status"]) for e in bundle["entry"]]


def test_history_says_201_for_every_version_that_created_its_resource(
    client: httpx.Client,
) -> None:
    id = f"hist-{uuid.uuid4().hex[:12]}"
    body = {**patient("History", "Status"), "id": id}
    first = client.put(f"/Patient/{id}", json=body)  # update as create
    assert first.status_code == 201
    assert client.put(f"/Patient/{id}", json={**body, "active": True}).status_code == 200
    assert client.delete(f"/Patient/{id}").status_code == 204
    again = client.put(f"/Patient/{id}", json=body)  # back from deletion
    assert again.status_code == 201
    assert client.put(f"/Patient/{id}", json={**body, "active": False}).status_code == 200
    expected = [
        ("PUT", "200 OK"),
        ("PUT", "201 Created"),
        ("DELETE", "204 No Content"),
        ("PUT", "200 OK"),
        ("PUT", "201 Created"),
    ]
    assert statuses(client, f"/Patient/{id}/_history") == expected
    # the same in type and system history, where entries of other resources lie between
    mine = [
        (e["request"]["method"], e["response"]["status"])
        for e in client.get("/Patient/_history", params={"_count": 200}).json()["entry"]
        if e["fullUrl"].endswith(f"/Patient/{id}")
    ]
    assert mine == expected
    created = create(client, patient("History", "Posted")).json()
    assert statuses(client, f"/Patient/{created['id']}/_history") == [("POST", "201 Created")]
