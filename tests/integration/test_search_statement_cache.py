"""Searches whose SQL comes from the planner's cache (one SQL text per query shape) still get their
own results: the values of one request never stand in for another's.

The searches run in this process, one after another, through the search service and the real
database, so the second search of a shape takes the SQL the first one compiled.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from fhir_server.search.grants import UNRESTRICTED, Everything, Grant, InCompartments
from fhir_server.storage.search_sql import clear_statement_cache, statement_cache_info
from tests.integration.test_search_access import run_search
from tests.support.resources import create_entry, patient, transaction
from tests.support.tokens import auth


@pytest.fixture(scope="module")
def world(live_server: Any) -> dict[str, Any]:
    """Three Patients with family names that share a prefix, each with an Observation."""
    tag = uuid.uuid4().hex
    prefix = "Zq" + uuid.uuid4().hex[:8]
    families = {"a": prefix, "b": prefix + "b", "c": prefix + "c"}
    meta = {"tag": [{"system": "urn:test:cache", "code": tag}]}
    entries = []
    for key, family in families.items():
        full_url = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, tag + key)}"
        entries.append(create_entry(patient(family, meta=meta), full_url))
        entries.append(
            create_entry(
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "urn:test:cache", "code": f"code-{key}"}]},
                    "subject": {"reference": full_url},
                    "meta": meta,
                }
            )
        )
    with httpx.Client(base_url=f"{live_server.origin}/fhir", timeout=30, headers=auth()) as c:
        response = c.post("", json=transaction(*entries))
    assert response.status_code == 200, response.text
    ids = [e["response"]["location"].split("/")[1] for e in response.json()["entry"]]
    return {
        "tag": f"urn:test:cache|{tag}",
        "prefix": prefix,
        "family": families,
        "patient": {k: ids[2 * i] for i, k in enumerate(families)},
        "observation": {k: ids[2 * i + 1] for i, k in enumerate(families)},
    }


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    clear_statement_cache()


def ids(
    database_url: str,
    world: dict[str, Any],
    resource_type: str,
    params: list[tuple[str, str]],
    access: Any = None,
) -> set[str]:
    bundle = run_search(
        database_url,
        Everything() if access is None else access,
        resource_type,
        [("_tag", world["tag"]), *params],
    )
    return {e["resource"]["id"] for e in bundle.get("entry", [])}


def test_same_shape_other_values_other_results(database_url: str, world: dict[str, Any]) -> None:
    patient, family = world["patient"], world["family"]
    for key in ("a", "b", "c", "b", "a"):
        found = ids(database_url, world, "Patient", [("family:exact", family[key])])
        assert found == {patient[key]}, key
    assert ids(database_url, world, "Patient", [("family:exact", "nobody")]) == set()
    info = statement_cache_info()
    assert info.misses == 1 and info.hits == 5  # one shape, its SQL compiled once


def test_list_lengths_share_sql_and_keep_their_values(
    database_url: str, world: dict[str, Any]
) -> None:
    patient = world["patient"]
    assert ids(database_url, world, "Patient", [("_id", patient["a"])]) == {patient["a"]}
    every = ",".join(patient.values())
    assert ids(database_url, world, "Patient", [("_id", every)]) == set(patient.values())
    assert ids(database_url, world, "Patient", [("_id", patient["b"])]) == {patient["b"]}
    assert statement_cache_info().misses == 1
    # OR-ed values are as many conditions: one shape per count, each with its own values
    observation = world["observation"]
    one = [("code", "urn:test:cache|code-c")]
    three = [("code", "urn:test:cache|code-a,urn:test:cache|code-b,urn:test:cache|code-x")]
    assert ids(database_url, world, "Observation", one) == {observation["c"]}
    assert ids(database_url, world, "Observation", three) == {observation["a"], observation["b"]}
    other = [("code", "urn:test:cache|code-a")]
    assert ids(database_url, world, "Observation", other) == {observation["a"]}


def test_modifiers_make_their_own_shapes(database_url: str, world: dict[str, Any]) -> None:
    patient, prefix = world["patient"], world["prefix"]
    every = set(patient.values())
    assert ids(database_url, world, "Patient", [("family", prefix.lower())]) == every
    assert ids(database_url, world, "Patient", [("family:exact", prefix)]) == {patient["a"]}
    assert ids(database_url, world, "Patient", [("family:exact", prefix.lower())]) == set()
    assert ids(database_url, world, "Patient", [("family:contains", prefix[3:] + "c")]) == {
        patient["c"]
    }
    assert ids(database_url, world, "Patient", [("family", prefix.lower() + "b")]) == {patient["b"]}


def test_access_values_are_per_request(database_url: str, world: dict[str, Any]) -> None:
    observation, patient = world["observation"], world["patient"]
    for key in ("a", "b", "c"):
        only = InCompartments(frozenset({f"Patient/{patient[key]}"}))
        assert ids(database_url, world, "Observation", [], only) == {observation[key]}, key
    both = InCompartments(frozenset({f"Patient/{patient['a']}", f"Patient/{patient['c']}"}))
    assert ids(database_url, world, "Observation", [], both) == {observation["a"], observation["c"]}
    assert statement_cache_info().misses == 1


class ObservationsOnly(dict[str, Grant | None]):
    def __missing__(self, resource_type: str) -> Grant | None:
        return UNRESTRICTED if resource_type == "Observation" else None


def test_chain_into_a_hidden_type(database_url: str, world: dict[str, Any]) -> None:
    # the chain's own conditions reduce to `false`: their values are bound and left unused
    chain = [("subject:Patient.family:exact", world["family"]["b"])]
    assert ids(database_url, world, "Observation", chain) == {world["observation"]["b"]}
    assert ids(database_url, world, "Observation", chain, ObservationsOnly()) == set()


def test_pages_of_one_search_share_sql(database_url: str, world: dict[str, Any]) -> None:
    params = [("_tag", world["tag"]), ("_count", "1"), ("_sort", "family")]
    seen: list[str] = []
    bundle = run_search(database_url, Everything(), "Patient", params)
    while True:
        seen += [e["resource"]["id"] for e in bundle["entry"]]
        following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not following:
            break
        cursor = httpx.URL(following[0]).params["_page"]
        bundle = run_search(database_url, Everything(), "Patient", [*params, ("_page", cursor)])
    patient = world["patient"]
    assert seen == [patient["a"], patient["b"], patient["c"]]
