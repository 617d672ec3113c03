"""A reference to another server's resource is never one of this server's, for the code that
decides access as for the compartment index (issue 12): checked through the API and the real
database. `https://other.example/fhir/Patient/<id>` names a resource of another server even
when a local Patient has that id; the same path under this server's base names the local one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.servers import LiveServer
from tests.support.tokens import auth

FOREIGN = "https://other.example/fhir"


@pytest.fixture(scope="module")
def system(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{live_server.origin}/fhir", timeout=30, headers=auth()) as c:
        yield c


def created(system: httpx.Client, resource: dict[str, Any]) -> str:
    response = system.post(f"/{resource['resourceType']}", json=resource)
    assert response.status_code == 201, response.text
    return f"{resource['resourceType']}/{response.json()['id']}"


def as_user(live_server: LiveServer, user: str, scope: str = "user/*.rs") -> httpx.Client:
    return httpx.Client(
        base_url=f"{live_server.origin}/fhir", timeout=30, headers=auth(user, scope)
    )


@pytest.fixture(scope="module")
def world(system: httpx.Client, live_server: LiveServer) -> dict[str, str]:
    tag = uuid.uuid4().hex
    meta = {"tag": [{"system": "urn:test:references", "code": tag}]}
    # a child: a parent's RelatedPerson link would open the whole compartment
    patient = created(system, {"resourceType": "Patient", "meta": meta, "birthDate": "2020-01-01"})
    local = f"{live_server.origin}/fhir"

    def related(base: str) -> str:
        return created(
            system,
            {
                "resourceType": "RelatedPerson",
                "meta": meta,
                "active": True,
                "patient": {"reference": f"{base}/{patient}"},
                "relationship": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                                "code": "MTH",
                            }
                        ]
                    }
                ],
            },
        )

    def observation(base: str) -> str:
        return created(
            system,
            {
                "resourceType": "Observation",
                "meta": meta,
                "status": "final",
                "code": {"text": base},
                "subject": {"reference": f"{base}/{patient}"},
            },
        )

    return {
        "tag": f"urn:test:references|{tag}",
        "patient": patient,
        "foreign_parent": related(FOREIGN),
        "local_parent": related(local),
        "foreign_observation": observation(FOREIGN),
        "local_observation": observation(local),
    }


def tagged_observations(client: httpx.Client, world: dict[str, str]) -> set[str]:
    """The Observations of the world the client finds by the world's tag (a 200 search)."""
    found = client.get("/Observation", params={"_tag": world["tag"]})
    assert found.status_code == 200, found.text
    return {f"Observation/{e['resource']['id']}" for e in found.json().get("entry", [])}


def test_a_relative_of_another_servers_patient_gets_nothing_here(
    live_server: LiveServer, world: dict[str, str]
) -> None:
    with as_user(live_server, world["foreign_parent"]) as parent:
        response = parent.get(f"/{world['patient']}")
        assert response.status_code == 403, response.text
        found = parent.get("/Observation", params={"_tag": world["tag"]})
        assert found.status_code in (200, 403)
        if found.status_code == 200:
            assert found.json().get("entry", []) == []


def test_a_relative_named_by_this_servers_absolute_url_is_one(
    live_server: LiveServer, world: dict[str, str]
) -> None:
    with as_user(live_server, world["local_parent"]) as parent:
        assert parent.get(f"/{world['patient']}").status_code == 200


def test_the_compartment_holds_only_the_local_reference(
    live_server: LiveServer, world: dict[str, str]
) -> None:
    with as_user(live_server, world["patient"]) as patient:
        assert tagged_observations(patient, world) == {world["local_observation"]}
    with as_user(live_server, world["local_parent"]) as parent:
        assert tagged_observations(parent, world) == {world["local_observation"]}
