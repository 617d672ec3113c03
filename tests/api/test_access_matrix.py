"""The access matrix: roles x interactions x (own, linked, unlinked, nonexistent) resources,
through HTTP with real signed tokens against real PostgreSQL. The expected outcome of every cell
comes from one table (`ALLOWED`); every denied write is followed by proof that nothing changed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.world import World, snapshot

INTERACTIONS = ("read", "vread", "history", "search", "update", "patch", "delete")
TARGETS = ("own", "linked", "unlinked", "nonexistent")
WRITES = {"update", "patch", "delete"}

# role -> (fhirUser key in the world, or None for a System client; target -> world key)
ROLES: dict[str, tuple[str | None, dict[str, str]]] = {
    "patient": ("adult", {"own": "obs_adult", "linked": "vitals_adult"}),
    "parent": ("parent", {"own": "obs_minor", "linked": "obs_minor_plain"}),
    "relative": ("relative", {"own": "obs_adult", "linked": "vitals_adult"}),
    "doctor": ("doctor", {"own": "obs_adult", "linked": "vitals_adult"}),
    "stranger": ("stranger", {"own": "obs_adult", "linked": "vitals_adult"}),
    "system": (None, {"own": "obs_adult", "linked": "obs_minor"}),
}
R = {"read", "vread", "history", "search"}
U = {"update", "patch"}
# The one table: which interactions each role may perform on each kind of target.
ALLOWED: dict[str, dict[str, set[str]]] = {
    # own compartment; patients do not delete
    "patient": {"own": R | U, "linked": R | U},
    # a minor's record fully; writes must also name the parent (reference_mismatch otherwise)
    "parent": {"own": R | U, "linked": R},
    # an adult's relative sees demographics only: no Observation without a Consent
    "relative": {},
    # the patients of the doctor's care team; deletes are for administrators
    "doctor": {"own": R | U, "linked": R | U},
    "stranger": {},
    "system": {t: R | U | {"delete"} for t in TARGETS},
}
# Roles that may search Observations at all (others get 403 for the type, not an empty page).
SEARCHES_TYPE = {"patient", "parent", "doctor", "system"}


@pytest.fixture(scope="module")
def world(make_world: Callable[..., World]) -> World:
    return make_world()


def _target(world: World, role: str, target: str) -> str:
    if target == "nonexistent":
        return f"Observation/{uuid.uuid4()}"
    if target == "unlinked":
        return world.ref("obs_other")
    return world.ref(ROLES[role][1][target])


def _fresh_copy(world: World, reference: str) -> str:
    """A new resource like `reference` (same subject and performer), for a write to change."""
    content = world.system.get(f"/{reference}").json()
    content.pop("id")
    content.pop("meta")
    return world.create(content)


def _expected(role: str, interaction: str, target: str) -> int:
    allowed = interaction in ALLOWED[role].get(target, set())
    if interaction == "search":
        return 200 if role in SEARCHES_TYPE else 403
    if role == "system" and target == "nonexistent":
        return {"update": 201}.get(interaction, 404)
    if not allowed:
        return 403
    return {"delete": 204}.get(interaction, 200)


CASES = [(r, i, t) for r in ROLES for i in INTERACTIONS for t in TARGETS]


@pytest.mark.parametrize(("role", "interaction", "target"), CASES)
def test_access_matrix(
    world: World, db: psycopg.Connection[Any], role: str, interaction: str, target: str
) -> None:
    user_key = ROLES[role][0]
    reference = _target(world, role, target)
    if interaction in WRITES and target != "nonexistent":
        reference = _fresh_copy(world, reference)
    type_, id = reference.split("/")
    expected = _expected(role, interaction, target)
    before = snapshot(db)
    with world.client(
        f"{world.ref(user_key)}" if user_key else None,
        "user/*.cruds" if user_key else "system/*.cruds",
    ) as caller:
        response = _perform(world, caller, interaction, type_, id)
    assert response.status_code == expected, (role, interaction, target, response.text)
    if interaction == "search" and expected == 200:
        found = {e["resource"]["id"] for e in response.json().get("entry", [])}
        visible = target != "nonexistent" and "read" in ALLOWED[role].get(target, set())
        assert (id in found) == visible, (role, target, found)
    if expected == 403:
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] == "forbidden"
        assert outcome["issue"][0]["details"]["coding"][0]["code"] in {
            "invalid_role",
            "invalid_compartment",
            "reference_mismatch",
            "consent_required",
        }
        assert snapshot(db) == before, "a denied request changed the database"


def _perform(
    world: World, caller: httpx.Client, interaction: str, type_: str, id: str
) -> httpx.Response:
    if interaction == "read":
        return caller.get(f"/{type_}/{id}")
    if interaction == "vread":
        return caller.get(f"/{type_}/{id}/_history/1")
    if interaction == "history":
        return caller.get(f"/{type_}/{id}/_history")
    if interaction == "search":
        return caller.get(f"/{type_}", params={"_id": id})
    if interaction == "delete":
        return caller.delete(f"/{type_}/{id}")
    if interaction == "patch":
        return caller.patch(
            f"/{type_}/{id}",
            json=[{"op": "replace", "path": "/status", "value": "amended"}],
            headers={"Content-Type": "application/json-patch+json"},
        )
    # update: the stored content with one change; for a resource that does not exist, the
    # unlinked patient's Observation under the new id
    source = f"{type_}/{id}"
    found = world.system.get(f"/{source}")
    body = (
        found.json()
        if found.status_code == 200
        else world.system.get(f"/{world.ref('obs_other')}").json()
    )
    body = {**body, "id": id, "status": "amended"}
    body.pop("meta", None)
    return caller.put(f"/{type_}/{id}", json=body)
