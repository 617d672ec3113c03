"""The access epoch per node of the facts walk (storage/access_facts.py, docs/scaling.md "Access
epochs"): a fact-bearing write bumps the counters of the nodes it touches and no other family's;
every kind of fact change still ends a user's cached facts on the very next request; a reference
to another server's resource bumps nothing local."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from fhir_server.storage.access_facts import fetch_access_facts
from fhir_server.storage.database import downgrade, migrate
from tests.support.resources import (
    GRANTEE,
    LAB,
    care_team,
    consent,
    observation,
    permit,
    related_person,
    years_ago,
)
from tests.support.world import World, person

Db = psycopg.Connection[Any]


def epochs(db: Db) -> dict[str, tuple[int, str]]:
    """Every counter: key -> (value, xmin). The xmin changes whenever a row is written (and
    locked), so an equal one proves a transaction did not touch the row at all."""
    rows = db.execute("SELECT key, value, xmin::text FROM access_epochs").fetchall()
    return {key: (int(value), xmin) for key, value, xmin in rows}


def changed(before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]) -> set[str]:
    return {key for key, row in after.items() if before.get(key) != row}


def family(world: World, name: str) -> dict[str, str]:
    """An adult patient, her spouse (RelatedPerson), a Consent that shares her lab results with
    him, and a lab Observation: references by name."""
    adult = world.create(
        {"resourceType": "Patient", "birthDate": years_ago(30), "name": [{"family": name}]}
    )
    spouse = world.create(related_person(adult, "SPS"))
    shared = world.create(
        consent(
            adult,
            permit(spouse, "LAB_RESULTS", role=GRANTEE),
            scope={"coding": [{"code": "patient-privacy"}]},
            category={"coding": [{"code": "INFA"}]},
        )
    )
    lab = world.observation(adult, f"{name}-lab", LAB)
    return {"adult": adult, "spouse": spouse, "consent": shared, "lab": lab}


def read_many(caller: httpx.Client, reference: str, status: int) -> None:
    """Read `reference` a few times (the server caches the caller's facts on the first)."""
    for _ in range(3):
        assert caller.get(f"/{reference}").status_code == status


def update(world: World, reference: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Change the stored resource with `change` and PUT it back as the System client."""
    content = world.system.get(f"/{reference}").json()
    change(content)
    response = world.system.put(f"/{reference}", json=content)
    assert response.status_code == 200, response.text


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    made: World = make_world(people=False)
    return made


def test_a_write_in_one_family_touches_no_counter_of_another(world: World, db: Db) -> None:
    a, b = family(world, "A"), family(world, "B")
    with world.client(b["spouse"]) as spouse_b:
        read_many(spouse_b, b["lab"], 200)  # B's facts cached, at B's keys' epoch
        before = epochs(db)
        # an update that keeps the Consent's patient bumps the Consent alone
        update(world, a["consent"], lambda c: c.update(status="inactive"))
        assert changed(before, epochs(db)) == {a["consent"]}
        # a new Consent bumps the patient it is about (an edge the walk follows), not itself
        before = epochs(db)
        world.create(consent(a["adult"], permit(a["spouse"], "LAB_RESULTS", role=GRANTEE)))
        assert changed(before, epochs(db)) == {a["adult"]}
        # a new RelatedPerson of A: A's patient; a deletion: its own key (the walk reached it)
        before = epochs(db)
        other = world.create(related_person(a["adult"], "BRO"))
        assert changed(before, epochs(db)) == {a["adult"]}
        before = epochs(db)
        assert world.system.delete(f"/{other}").status_code in (200, 204)
        assert changed(before, epochs(db)) == {other}
        # B's cached facts still hold (they were never invalidated) and still give access
        read_many(spouse_b, b["lab"], 200)


def test_the_facts_carry_the_keys_of_their_walk(world: World, database_url: str) -> None:
    """The facts statement's epoch row: the user, the patient and the Consent it walked through,
    the global key, and the sum of their counters."""
    f = family(world, "Keys")

    async def facts() -> list[Any]:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            return await fetch_access_facts(conn, f["spouse"])

    rows = asyncio.run(facts())
    (epoch,) = [row for row in rows if row[0] == "epoch"]
    keys = set(epoch[3]["keys"])
    assert {"*", f["spouse"], f["adult"], f["consent"]} <= keys
    with psycopg.connect(database_url) as db:
        (total,) = db.execute(
            "SELECT coalesce(sum(value), 0) FROM access_epochs WHERE key = ANY(%s)", (list(keys),)
        ).fetchone() or (None,)
    assert int(epoch[2]) == total


def test_revoking_a_consent_ends_access_on_the_next_request(world: World) -> None:
    f = family(world, "Revoke")
    with world.client(f["spouse"]) as spouse:
        read_many(spouse, f["lab"], 200)
        update(world, f["consent"], lambda c: c.update(status="inactive"))
        assert spouse.get(f"/{f['lab']}").status_code == 403
        assert (
            spouse.get("/Observation", params={"subject": f["adult"]}).json().get("total", 0) == 0
        )


def test_a_new_consent_grants_access_on_the_next_request(world: World) -> None:
    f = family(world, "Grant")
    update(world, f["consent"], lambda c: c.update(status="inactive"))
    with world.client(f["spouse"]) as spouse:
        read_many(spouse, f["lab"], 403)
        world.create(consent(f["adult"], permit(f["spouse"], "LAB_RESULTS", role=GRANTEE)))
        assert spouse.get(f"/{f['lab']}").status_code == 200


def test_ending_a_related_person_ends_access(world: World) -> None:
    child = world.create({"resourceType": "Patient", "birthDate": years_ago(8)})
    parent = world.create(related_person(child, "MTH"))
    lab = world.observation(child, "end-rp", LAB)
    with world.client(parent) as p:
        read_many(p, lab, 200)
        update(world, parent, lambda c: c.update(active=False))
        assert p.get(f"/{lab}").status_code == 403


def test_a_birth_date_that_makes_the_child_an_adult_ends_access(world: World) -> None:
    child = world.create({"resourceType": "Patient", "birthDate": years_ago(12)})
    parent = world.create(related_person(child, "FTH"))
    lab = world.observation(child, "birthdate", LAB)
    with world.client(parent) as p:
        read_many(p, lab, 200)
        update(world, child, lambda c: c.update(birthDate=years_ago(18)))
        assert p.get(f"/{lab}").status_code == 403


def test_removing_a_person_link_ends_access(world: World) -> None:
    child = world.create({"resourceType": "Patient", "birthDate": years_ago(9)})
    parent = world.create(related_person(child, "MTH"))
    account = world.create(person((parent, "level4")))
    lab = world.observation(child, "person-link", LAB)
    with world.client(account) as p:
        read_many(p, lab, 200)
        update(world, account, lambda c: c.pop("link"))
        assert p.get(f"/{lab}").status_code == 403


def test_removing_a_care_team_participant_ends_access(world: World) -> None:
    patient = world.create({"resourceType": "Patient", "birthDate": years_ago(50)})
    doctor = world.create({"resourceType": "Practitioner"})
    nurse = world.create({"resourceType": "Practitioner"})
    team = world.create(care_team(patient, doctor, nurse))
    record = world.create(observation(patient, text="x", category=None))
    with world.client(doctor) as d:
        read_many(d, record, 200)
        update(world, team, lambda c: c.update(participant=[{"member": {"reference": nurse}}]))
        assert d.get(f"/{record}").status_code == 403


def test_changing_the_general_practitioner_moves_access(world: World) -> None:
    doctor = world.create({"resourceType": "Practitioner"})
    successor = world.create({"resourceType": "Practitioner"})
    patient = world.create(
        {
            "resourceType": "Patient",
            "birthDate": years_ago(60),
            "generalPractitioner": [{"reference": doctor}],
        }
    )
    record = world.create(observation(patient, text="x", category=None))
    with world.client(doctor) as d, world.client(successor) as s:
        read_many(d, record, 200)  # also: a Patient POSTed with a GP counts at once
        read_many(s, record, 403)
        update(world, patient, lambda c: c.update(generalPractitioner=[{"reference": successor}]))
        assert d.get(f"/{record}").status_code == 403
        assert s.get(f"/{record}").status_code == 200


def test_a_foreign_reference_bumps_nothing_local(world: World, db: Db) -> None:
    f = family(world, "Foreign")
    local_id = f["adult"].split("/")[1]
    before = epochs(db)
    # POSTed (no own key) and pointing at another server's Patient with the same id
    world.create(related_person(f"https://other.example.org/fhir/Patient/{local_id}", "SPS"))
    world.create(
        consent(
            f"https://other.example.org/fhir/Patient/{local_id}",
            permit(f["spouse"], "LAB_RESULTS", role=GRANTEE),
        )
    )
    assert changed(before, epochs(db)) == set()


def test_a_transaction_bumps_the_counters_of_its_creates(world: World, db: Db) -> None:
    """The COPY path of transactions: a RelatedPerson created in a Bundle gives access at once."""
    child = world.create({"resourceType": "Patient", "birthDate": years_ago(7)})
    lab = world.observation(child, "bundle", LAB)
    before = epochs(db)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:7f0c2f9e-0000-4000-8000-000000000001",
                "resource": related_person(child, "MTH"),
                "request": {"method": "POST", "url": "RelatedPerson"},
            }
        ],
    }
    response = world.system.post("/", json=bundle)
    assert response.status_code == 200, response.text
    assert changed(before, epochs(db)) == {child}
    location = response.json()["entry"][0]["response"]["location"]
    parent = "/".join(location.split("/")[:2])
    with world.client(parent) as p:
        assert p.get(f"/{lab}").status_code == 200


def test_the_migration_carries_the_global_epoch_both_ways(empty_database: str) -> None:
    """0009 moves the single row's value to `*` (cached facts keep being compared against a sum
    at least as large) and its downgrade restores a row larger than every sum."""
    migrate(empty_database, "0008_approval_last_used")
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("UPDATE access_epoch SET value = 42 WHERE id = 1")
    migrate(empty_database)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        assert conn.execute("SELECT key, value FROM access_epochs").fetchall() == [("*", 42)]
        conn.execute("INSERT INTO access_epochs VALUES ('Patient/1', 5)")
    downgrade(empty_database, "0008_approval_last_used")
    with psycopg.connect(empty_database, autocommit=True) as conn:
        assert conn.execute("SELECT id, value FROM access_epoch").fetchall() == [(1, 48)]
