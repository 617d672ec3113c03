"""One clock: the application's (`create_app(..., clock=)`) is every request's `Context.clock`,
and what asks the time asks it: the CapabilityStatement's date, and `ap` on dates in a search
(10 % of the distance from now, passed down to the planner in storage/ as a value)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx

from fhir_server.settings import Settings
from tests.support.servers import LiveServer
from tests.support.tokens import auth

# Far from today: `ap2010-01-01` then reaches 12 years around 2010 (today, under two).
LONG_AGO = datetime(1890, 1, 1, tzinfo=UTC)


def test_the_application_clock_is_the_one_clock(database_url: str, client: httpx.Client) -> None:
    family = f"Clock-{uuid.uuid4().hex[:8]}"
    created = client.post(
        "/Patient",
        json={"resourceType": "Patient", "name": [{"family": family}], "birthDate": "2001-06-01"},
    )
    assert created.status_code == 201, created.text
    search = {"family": family, "birthdate": "ap2010-01-01"}
    # by the real clock, 2001 is not about 2010
    assert client.get("/Patient", params=search).json().get("total", 0) == 0

    # a server of the same code whose application clock stands at LONG_AGO (only reads: nothing
    # is written there with a date of 1890)
    with (
        LiveServer(Settings(), database_url, clock=lambda: LONG_AGO) as server,
        httpx.Client(base_url=f"{server.origin}/fhir", timeout=30) as fixed,
    ):
        metadata = fixed.get("/metadata")
        assert metadata.status_code == 200 and metadata.json()["date"] == "1890-01-01"
        found = fixed.get("/Patient", params={**search, "_total": "accurate"}, headers=auth())
        assert found.status_code == 200, found.text
        bundle = found.json()
        assert bundle["total"] == 1
        assert bundle["entry"][0]["resource"]["id"] == created.json()["id"]
