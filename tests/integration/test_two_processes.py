"""Two `fhir-server serve` processes on one database serve the same clients correctly: the API
keeps no state between requests that the other process would miss (docs/scaling.md). ETag
conflicts, idempotency keys and the invalidation of cached access facts cross processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.resources import years_ago
from tests.support.servers import server_processes
from tests.support.tokens import auth


@pytest.fixture(scope="module")
def servers(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    with server_processes(database_url, tmp_path_factory.mktemp("two-processes"), 2) as bases:
        yield bases


def create(origin: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST the resource to the server at `origin` as the system: the stored resource."""
    response = httpx.post(f"{origin}/fhir/{body['resourceType']}", json=body, headers=auth())
    created: dict[str, Any] = response.json()
    return created


def test_etag_conflicts_cross_processes(servers: list[str]) -> None:
    a, b = servers
    created = create(a, {"resourceType": "Patient"})
    url = f"/fhir/Patient/{created['id']}"
    first = httpx.put(
        f"{a}{url}", json={**created, "gender": "male"}, headers={**auth(), "If-Match": 'W/"1"'}
    )
    assert first.status_code == 200
    stale = httpx.put(
        f"{b}{url}", json={**created, "gender": "female"}, headers={**auth(), "If-Match": 'W/"1"'}
    )
    assert stale.status_code == 412
    assert httpx.get(f"{b}{url}", headers=auth()).json()["gender"] == "male"


def test_idempotency_keys_cross_processes(servers: list[str]) -> None:
    a, b = servers
    headers = {**auth(), "Idempotency-Key": uuid.uuid4().hex}
    body = {"resourceType": "Patient", "name": [{"family": "TwoProcs"}]}
    one = httpx.post(f"{a}/fhir/Patient", json=body, headers=headers)
    two = httpx.post(f"{b}/fhir/Patient", json=body, headers=headers)
    assert one.status_code == two.status_code == 201
    assert one.json()["id"] == two.json()["id"]


def test_revoking_on_one_process_ends_access_on_the_other(servers: list[str]) -> None:
    a, b = servers
    child = create(a, {"resourceType": "Patient", "birthDate": years_ago(6)})
    guardian = create(
        a,
        {
            "resourceType": "RelatedPerson",
            "patient": {"reference": f"Patient/{child['id']}"},
            "relationship": [{"coding": [{"code": "GUARD"}]}],
        },
    )
    record = create(
        a,
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": f"Patient/{child['id']}"},
        },
    )
    reader = auth(f"RelatedPerson/{guardian['id']}", "user/*.rs")
    for _ in range(3):  # process B now has the guardian's facts cached
        assert httpx.get(f"{b}/fhir/Observation/{record['id']}", headers=reader).status_code == 200
    ended = {**guardian, "active": False}
    assert (
        httpx.put(
            f"{a}/fhir/RelatedPerson/{guardian['id']}", json=ended, headers=auth()
        ).status_code
        == 200
    )
    assert httpx.get(f"{b}/fhir/Observation/{record['id']}", headers=reader).status_code == 403
