"""The search planner's access filter reaches every statement it builds.

These tests run the search service directly, on the real database, with a restricted filter
(the engine's part is tested through HTTP in tests/api/test_access_*.py): what the caller may not
see must not come back from the main query, `_include`, `_revinclude`, chains, `_has`,
compartment search or totals.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from fhir_server.search.grants import Everything, Grants, InCompartments
from fhir_server.services.access.guard import Guard
from fhir_server.services.context import Context, server_guard
from fhir_server.services.interactions import search
from fhir_server.settings import Settings
from fhir_server.validation import default_validator
from tests.support.resources import create_entry, patient, transaction
from tests.support.tokens import auth


@pytest.fixture(scope="module")
def world(client_module: httpx.Client) -> dict[str, str]:
    """Patients A and B with their data; some of B's data points at A (focus, encounter)."""
    tag = uuid.uuid4().hex
    meta = {"tag": [{"system": "urn:test:access", "code": tag}]}

    def entry(key: str, resource: dict[str, Any]) -> dict[str, Any]:
        return create_entry({**resource, "meta": meta}, f"urn:uuid:{key}")

    keys = {name: str(uuid.uuid4()) for name in ("pa", "pb", "ea", "eb", "oa", "ob", "ox")}
    ref = {name: {"reference": f"urn:uuid:{key}"} for name, key in keys.items()}
    code = {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}
    bundle = transaction(
        entry(keys["pa"], patient("Able")),
        entry(keys["pb"], patient("Baker")),
        entry(
            keys["ea"],
            {
                "resourceType": "Encounter",
                "status": "planned",
                "class": {"code": "AMB"},
                "subject": ref["pa"],
            },
        ),
        entry(
            keys["eb"],
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"code": "AMB"},
                "subject": ref["pb"],
            },
        ),
        # A's observation points at B's encounter: including it must not reveal B's encounter.
        entry(
            keys["oa"],
            {
                "resourceType": "Observation",
                "status": "final",
                "code": code,
                "subject": ref["pa"],
                "encounter": ref["eb"],
            },
        ),
        entry(
            keys["ob"],
            {"resourceType": "Observation", "status": "final", "code": code, "subject": ref["pb"]},
        ),
        # B's observation about A (focus is not a compartment link): hidden from A's side.
        entry(
            keys["ox"],
            {
                "resourceType": "Observation",
                "status": "amended",
                "code": code,
                "subject": ref["pb"],
                "focus": [ref["pa"]],
            },
        ),
    )
    response = client_module.post("", json=bundle)
    assert response.status_code == 200, response.text
    ids = {
        name: e["response"]["location"].split("/")[1]
        for name, e in zip(keys, response.json()["entry"], strict=True)
    }
    return {**ids, "tag": f"urn:test:access|{tag}"}


@pytest.fixture(scope="module")
def client_module(live_server: Any) -> Any:
    with httpx.Client(base_url=f"{live_server.origin}/fhir", timeout=30, headers=auth()) as c:
        yield c


class FilterGuard(Guard):
    """A guard that allows every search and filters it with the given grants."""

    def __init__(self, access: Grants) -> None:
        base = server_guard()
        super().__init__(base.principal, base.account, base.identities, base.facts, base.policy)
        self._fixed = access

    def grants(self, operation: str, types: Iterable[str] | None = None) -> Any:
        return self._fixed


def run_search(
    database_url: str,
    access: Grants,
    resource_type: str | None,
    params: list[tuple[str, str]],
    compartment: tuple[str, str] | None = None,
) -> dict[str, Any]:
    ctx = Context(
        settings=Settings(),
        validator=default_validator(),
        base_url="http://test/fhir",
        guard=FilterGuard(access),
    )

    async def go() -> bytes:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            return await search.search(ctx, conn, resource_type, params, compartment=compartment)

    result: dict[str, Any] = orjson.loads(asyncio.run(go()))
    return result


def found(bundle: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (e["resource"]["resourceType"], e["resource"]["id"], e["search"]["mode"])
        for e in bundle.get("entry", [])
    }


def only_a(world: dict[str, str]) -> InCompartments:
    return InCompartments(frozenset({f"Patient/{world['pa']}"}))


def test_main_query_and_totals(world: dict[str, str], database_url: str) -> None:
    params = [("_tag", world["tag"]), ("code", "8867-4"), ("_total", "accurate")]
    everything = run_search(database_url, Everything(), "Observation", params)
    assert everything["total"] == 3
    restricted = run_search(database_url, only_a(world), "Observation", params)
    assert found(restricted) == {("Observation", world["oa"], "match")}
    assert restricted["total"] == 1
    counted = run_search(
        database_url, only_a(world), "Observation", [*params[:2], ("_summary", "count")]
    )
    assert counted["total"] == 1


def test_include_does_not_reveal_hidden_targets(world: dict[str, str], database_url: str) -> None:
    params = [("_tag", world["tag"]), ("_id", world["oa"]), ("_include", "Observation:encounter")]
    everything = run_search(database_url, Everything(), "Observation", params)
    assert ("Encounter", world["eb"], "include") in found(everything)
    restricted = run_search(database_url, only_a(world), "Observation", params)
    assert found(restricted) == {("Observation", world["oa"], "match")}


def test_revinclude_does_not_reveal_hidden_sources(
    world: dict[str, str], database_url: str
) -> None:
    params = [
        ("_id", world["pa"]),
        ("_revinclude", "Observation:focus"),
        ("_revinclude", "Observation:subject"),
    ]
    everything = run_search(database_url, Everything(), "Patient", params)
    assert ("Observation", world["ox"], "include") in found(everything)
    restricted = run_search(database_url, only_a(world), "Patient", params)
    assert found(restricted) == {
        ("Patient", world["pa"], "match"),
        ("Observation", world["oa"], "include"),
    }


def test_chain_does_not_match_through_hidden_targets(
    world: dict[str, str], database_url: str
) -> None:
    params = [("_tag", world["tag"]), ("encounter.status", "finished")]
    everything = run_search(database_url, Everything(), "Observation", params)
    assert ("Observation", world["oa"], "match") in found(everything)
    restricted = run_search(database_url, only_a(world), "Observation", params)
    assert found(restricted) == set()


def test_has_does_not_match_through_hidden_sources(
    world: dict[str, str], database_url: str
) -> None:
    params = [("_tag", world["tag"]), ("_has:Observation:focus:status", "amended")]
    everything = run_search(database_url, Everything(), "Patient", params)
    assert found(everything) == {("Patient", world["pa"], "match")}
    restricted = run_search(database_url, only_a(world), "Patient", params)
    assert found(restricted) == set()


@pytest.mark.parametrize(
    "chain",
    [
        ("encounter._id", "eb"),
        ("encounter:Encounter._id", "eb"),
        ("encounter._id:missing", "false"),
        ("encounter._id:not", "ea"),
        ("encounter._lastUpdated", "gt2000"),
    ],
)
def test_chained_id_and_last_updated_do_not_match_through_hidden_targets(
    world: dict[str, str], database_url: str, chain: tuple[str, str]
) -> None:
    """`_id` and `_lastUpdated` at the end of a chain are conditions on the target's row, which
    the caller's filter guards as it guards any chained parameter."""
    name, value = chain
    params = [("_tag", world["tag"]), ("_id", world["oa"]), (name, world.get(value, value))]
    everything = run_search(database_url, Everything(), "Observation", params)
    assert found(everything) == {("Observation", world["oa"], "match")}
    restricted = run_search(database_url, only_a(world), "Observation", params)
    assert found(restricted) == set()


@pytest.mark.parametrize(
    "has", [("_has:Observation:focus:_id", "ox"), ("_has:Observation:focus:_lastUpdated", "gt2000")]
)
def test_has_on_id_and_last_updated_does_not_match_through_hidden_sources(
    world: dict[str, str], database_url: str, has: tuple[str, str]
) -> None:
    name, value = has
    params = [("_tag", world["tag"]), (name, world.get(value, value))]
    everything = run_search(database_url, Everything(), "Patient", params)
    assert found(everything) == {("Patient", world["pa"], "match")}
    restricted = run_search(database_url, only_a(world), "Patient", params)
    assert found(restricted) == set()


def test_compartment_search_stays_inside_the_filter(
    world: dict[str, str], database_url: str
) -> None:
    params = [("_tag", world["tag"])]
    of_b = run_search(
        database_url, Everything(), None, params, compartment=("Patient", world["pb"])
    )
    assert {(t, i) for t, i, _ in found(of_b)} == {
        ("Patient", world["pb"]),
        ("Encounter", world["eb"]),
        ("Observation", world["ob"]),
        ("Observation", world["ox"]),
    }
    restricted = run_search(
        database_url, only_a(world), None, params, compartment=("Patient", world["pb"])
    )
    assert found(restricted) == set()


def test_creator_sees_what_it_created(
    world: dict[str, str], database_url: str, db: psycopg.Connection[Any]
) -> None:
    creator = f"RelatedPerson/{uuid.uuid4()}"
    db.execute(
        "UPDATE resources SET created_by = %s WHERE resource_type = 'Observation' AND id = %s",
        (creator, world["ob"]),
    )
    params = [("_tag", world["tag"])]
    restricted = run_search(
        database_url, InCompartments(frozenset(), creator=creator), "Observation", params
    )
    assert found(restricted) == {("Observation", world["ob"], "match")}
    nobody = run_search(database_url, InCompartments(frozenset()), "Observation", params)
    assert found(nobody) == set()
