"""history for instance, type and system, with _count, _since and paging."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx


def make(client: httpx.Client, rtype: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/{rtype}", json={"resourceType": rtype, **body})
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def follow(client: httpx.Client, url: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    seen = 0
    while url:
        page = client.get(url).json()
        assert page["type"] == "history"
        entries.extend(page.get("entry", []))
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), "")
        seen += 1
        assert seen < 100
    return entries


def test_instance_history_lists_every_version_newest_first(client: httpx.Client) -> None:
    created = make(client, "Patient", {"gender": "male"})
    id = created["id"]
    client.put(f"/Patient/{id}", json={**created, "gender": "female"})
    client.delete(f"/Patient/{id}")
    response = client.get(f"/Patient/{id}/_history")
    assert response.status_code == 200
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "history"
    assert bundle["total"] == 3
    methods = [e["request"]["method"] for e in bundle["entry"]]
    assert methods == ["DELETE", "PUT", "POST"]
    assert "resource" not in bundle["entry"][0]
    assert bundle["entry"][1]["resource"]["gender"] == "female"
    assert bundle["entry"][2]["resource"]["meta"]["versionId"] == "1"
    assert bundle["entry"][0]["response"]["etag"] == 'W/"3"'
    assert all(e["fullUrl"].endswith(f"/Patient/{id}") for e in bundle["entry"])


def test_instance_history_of_unknown_resource_is_404(client: httpx.Client) -> None:
    assert client.get("/Patient/nobody-here/_history").status_code == 404


def test_count_pages_through_every_version_once(client: httpx.Client) -> None:
    created = make(client, "Patient", {})
    id = created["id"]
    for i in range(6):
        client.put(f"/Patient/{id}", json={**created, "birthDate": f"200{i}-01-01"})
    first = client.get(f"/Patient/{id}/_history", params={"_count": 2})
    page = first.json()
    assert len(page["entry"]) == 2
    assert any(link["relation"] == "next" for link in page["link"])
    entries = follow(client, str(first.url))
    versions = [int(e["response"]["etag"][3:-1]) for e in entries]
    assert versions == [7, 6, 5, 4, 3, 2, 1]


def test_since_filters_versions(client: httpx.Client) -> None:
    created = make(client, "Patient", {})
    id = created["id"]
    time.sleep(0.01)
    cut = datetime.now(UTC).isoformat()
    time.sleep(0.01)
    client.put(f"/Patient/{id}", json={**created, "gender": "unknown"})
    bundle = client.get(f"/Patient/{id}/_history", params={"_since": cut}).json()
    assert [e["request"]["method"] for e in bundle["entry"]] == ["PUT"]
    assert bundle["total"] == 1
    assert client.get(f"/Patient/{id}/_history", params={"_since": "yesterday"}).status_code == 400


def test_type_and_system_history(client: httpx.Client) -> None:
    cut = datetime.now(UTC).isoformat()
    time.sleep(0.01)
    device = make(client, "Device", {"status": "active"})
    substance = make(client, "Substance", {"code": {"text": "water"}})
    type_entries = follow(
        client,
        f"{str(client.base_url).rstrip('/')}/Device/_history?_since={cut.replace('+', '%2B')}&_count=1",
    )
    assert [e["resource"]["id"] for e in type_entries] == [device["id"]]
    system = follow(
        client,
        f"{str(client.base_url).rstrip('/')}/_history?_since={cut.replace('+', '%2B')}&_count=1",
    )
    ids = [e["resource"]["id"] for e in system]
    assert ids == [substance["id"], device["id"]]


def test_history_refuses_unknown_parameters(client: httpx.Client) -> None:
    response = client.get("/Patient/_history", params={"_at": "2020"})
    assert response.status_code == 400
    assert "`_at`" in response.json()["issue"][0]["diagnostics"]
