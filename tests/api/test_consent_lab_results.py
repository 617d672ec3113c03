"""A "lab results" Consent opens the patient's laboratory Observations only, for every caller
(issue 14; docs/account-sharing.md "Lab results"): the engine's grant carries the category into
SQL, so a plain `user/*` token or the account pages' session sees Jane's lab result and never
her vital signs, in reads, searches, `_include`, history and writes alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.support.resources import LAB, VITALS, observation
from tests.support.world import World, jane_consent, make_family, snapshot


@pytest.fixture(scope="module")
def family(make_world: Callable[..., World]) -> World:
    world: World = make_world(people=False, tag_length=8)
    make_family(world)
    world.ids["lab_results"] = world.create(jane_consent(world, "LAB_RESULTS"))
    return world


def ids(bundle: dict[str, Any]) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", ())
    }


@pytest.mark.parametrize("fhir_user", ["rp_jane", "john_person"])
@pytest.mark.parametrize("scope", ["user/*.cruds", "user/*.rs", "user/Observation.read"])
def test_lab_results_open_the_laboratory_observation_and_not_the_vital_signs(
    family: World, fhir_user: str, scope: str
) -> None:
    lab, vitals, jane = family.ref("obs_jane"), family.ref("vitals_jane"), family.ref("jane")
    with family.client(family.ref(fhir_user), scope) as john:
        assert john.get(f"/{lab}").status_code == 200
        assert john.get(f"/{vitals}").status_code == 403
        assert john.get(f"/{vitals}/_history/1").status_code == 403
        assert john.get(f"/{vitals}/_history").status_code in {403, 200}
        history = john.get(f"/{vitals}/_history")
        if history.status_code == 200:
            assert ids(history.json()) == set()
        found = john.get("/Observation", params={"subject": jane})
        assert found.status_code == 200
        assert ids(found.json()) == {lab}
        # asking for vital signs by name finds nothing either
        signs = john.get("/Observation", params={"subject": jane, "category": "vital-signs"})
        assert ids(signs.json()) == set()
        total = john.get("/Observation", params={"subject": jane, "_summary": "count"}).json()
        assert total.get("total") == 1
        type_history = john.get("/Observation/_history")
        if type_history.status_code == 200:
            assert lab in ids(type_history.json()) and vitals not in ids(type_history.json())


def test_an_include_brings_no_vital_signs(family: World) -> None:
    jane = family.ref("jane")
    with family.client(family.ref("rp_jane")) as john:
        found = john.get(
            "/Patient", params={"_id": jane.split("/")[1], "_revinclude": "Observation:subject"}
        )
        assert found.status_code == 200
        assert family.ref("vitals_jane") not in ids(found.json())
        assert family.ref("obs_jane") in ids(found.json())


def test_writes_stay_inside_the_laboratory_category(
    family: World, db: psycopg.Connection[Any]
) -> None:
    jane, rp = family.ref("jane"), family.ref("rp_jane")
    with family.client(rp) as john:
        before = snapshot(db)
        vitals = observation(jane, rp, code="pulse", category=VITALS)
        assert john.post("/Observation", json=vitals).status_code == 403
        assert snapshot(db) == before
        lab = john.post("/Observation", json=observation(jane, rp, code="glucose", category=LAB))
        assert lab.status_code == 201, lab.text
        # turning his laboratory result into a vital sign is refused, and changes nothing
        moved = {**lab.json(), "category": [VITALS]}
        before = snapshot(db)
        assert john.put(f"/Observation/{lab.json()['id']}", json=moved).status_code == 403
        assert snapshot(db) == before
    # a vital sign that names him stays out of reach for an update or a delete
    theirs = family.create(observation(jane, rp, code="bp", category=VITALS))
    with family.client(rp) as john:
        stored = family.system.get(f"/{theirs}").json()
        before = snapshot(db)
        assert john.put(f"/{theirs}", json={**stored, "status": "amended"}).status_code == 403
        assert john.delete(f"/{theirs}").status_code == 403
        assert snapshot(db) == before


def test_revoking_closes_the_laboratory_observations_too(make_world: Callable[..., World]) -> None:
    world: World = make_world(people=False, tag_length=8)
    make_family(world)
    granted = world.create(jane_consent(world, "LAB_RESULTS"))
    with world.client(world.ref("rp_jane"), "user/*.rs") as john:
        assert john.get(f"/{world.ref('obs_jane')}").status_code == 200
        stored = world.system.get(f"/{granted}").json()
        assert world.system.put(f"/{granted}", json={**stored, "status": "inactive"}).is_success
        assert john.get(f"/{world.ref('obs_jane')}").status_code == 403


def test_a_whole_class_consent_still_opens_every_observation(
    make_world: Callable[..., World],
) -> None:
    """A Consent by resource type (not by the server's lab results scope) means every
    Observation: the narrowing belongs to the scope code, not to the type."""
    world: World = make_world(people=False, tag_length=8)
    make_family(world)
    klass = [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]
    world.create(jane_consent(world, **{"class": klass}))
    with world.client(world.ref("rp_jane"), "user/*.rs") as john:
        found = john.get("/Observation", params={"subject": world.ref("jane")})
        assert ids(found.json()) == {world.ref("obs_jane"), world.ref("vitals_jane")}
