"""The picker's list on the real database (issue 13): John's family, as `choices()` sees it
with the facts the Guard loads, and a token made of a choice (its `fhirUser`, narrowed scopes
and `access_basis`) gets from the live server exactly what the choice promised, audited with
the relationship and Consent it acts on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from capability.definitions import resource_types
from compartments.policy import Policy, default_policy
from fhir_server.services.context import Context, nobody
from fhir_server.services.workflows.launch_choices import (
    Choice,
    access_basis,
    choices,
    narrow_scopes,
    token_identity,
)
from fhir_server.settings import Settings
from fhir_server.validation import default_validator
from tests.support.resources import related_person
from tests.support.tokens import auth
from tests.support.world import World, jane_consent, make_family

POLICY = Policy(default_policy(resource_types()))
CTX = Context(
    settings=Settings(), validator=default_validator(), base_url="http://t/fhir", guard=nobody()
)


def picked(database_url: str, fhir_user: str) -> list[Choice]:
    async def go() -> list[Choice]:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            return await choices(CTX, conn, fhir_user, policy=POLICY)

    return asyncio.run(go())


@pytest.fixture
def family(make_world: Callable[..., World]) -> World:
    world: World = make_world(people=False, tag_length=8)
    make_family(world)
    return world


def test_john_picks_himself_mary_tom_and_jane(family: World, database_url: str) -> None:
    ids, tag = family.ids, family.tag
    found = picked(database_url, ids["john_person"])
    assert found[0].patient == ids["john"]  # himself first
    by = {c.patient: c for c in found}
    assert set(by) == {ids["john"], ids["mary"], ids["tom"], ids["jane"]}
    john, mary, tom, jane = (by[ids[n]] for n in ("john", "mary", "tom", "jane"))
    assert (john.name, john.age, john.whole_record) == (f"John Doe{tag}", 40, True)
    assert john.description == "John (you): the whole record"
    assert (mary.name, mary.age, mary.via, mary.relationships) == (
        f"Mary Doe{tag}",
        12,
        ids["rp_mary"],
        {"FTH"},
    )
    assert mary.whole_record and mary.minor and mary.description == "Mary is 12: the whole record"
    assert tom.whole_record and tom.age == 8 and tom.description == "Tom is 8: the whole record"
    assert jane.via == ids["rp_jane"] and jane.relationships == {"SPS"} and not jane.minor
    assert not jane.whole_record and jane.scopes == {"DEMOGRAPHICS"}
    assert jane.description == "Jane is an adult: contact details"
    # as the Guard does, a user that a Person links acts with all of the Person's links
    everyone = [c.patient for c in found]
    assert [c.patient for c in picked(database_url, ids["rp_mary"])] == everyone
    assert [c.patient for c in picked(database_url, ids["john"])] == everyone
    # a RelatedPerson no Person links: only its patient
    mother = family.create(related_person(ids["tom"], "MTH"))
    (tom_only,) = picked(database_url, mother)
    assert (tom_only.patient, tom_only.via, tom_only.relationships) == (ids["tom"], mother, {"MTH"})


def test_janes_consent_adds_her_lab_results_and_an_ended_link_drops_her(
    family: World, database_url: str
) -> None:
    ids = family.ids
    end = (datetime.now(UTC) + timedelta(days=120)).date()
    consent = family.create(jane_consent(family, "LAB_RESULTS", period={"end": end.isoformat()}))
    jane = next(c for c in picked(database_url, ids["john_person"]) if c.patient == ids["jane"])
    assert jane.scopes == {"DEMOGRAPHICS", "LAB_RESULTS"}
    assert consent in jane.evidence
    assert jane.description == (
        f"Jane is an adult: contact details; lab results until {end.day} {end:%B %Y} by her consent"
    )
    # John's RelatedPerson towards Jane ends: she is no longer on his list
    rp = family.system.get(f"/{ids['rp_jane']}").json()
    rp["active"] = False
    assert family.system.put(f"/{ids['rp_jane']}", json=rp).status_code == 200
    found = {c.patient for c in picked(database_url, ids["john_person"])}
    assert found == {ids["john"], ids["mary"], ids["tom"]}


def test_a_practitioner_without_care_relationships_has_no_choices(
    family: World, database_url: str
) -> None:
    doctor = family.create({"resourceType": "Practitioner", "name": [{"family": "Who"}]})
    assert picked(database_url, doctor) == []


def events_naming(db: psycopg.Connection[Any], reference: str) -> list[dict[str, Any]]:
    """The AuditEvents whose agent.policy names `reference`, once the writer has stored them
    (allowed reads are stored in batches by another process)."""
    for _ in range(300):
        rows = db.execute(
            "SELECT content FROM audit_events WHERE true AND content->'agent'->0->'policy' ? %s",
            (reference,),
        ).fetchall()
        if rows:
            return [r[0] for r in rows]
        time.sleep(0.1)
    return []


def test_a_token_made_of_a_choice_gets_what_it_promised_and_is_audited(
    family: World, database_url: str, db: psycopg.Connection[Any]
) -> None:
    ids = family.ids
    consent = family.create(jane_consent(family, "LAB_RESULTS"))
    jane = next(c for c in picked(database_url, ids["john_person"]) if c.patient == ids["jane"])
    scope, dropped = narrow_scopes("launch/patient openid fhirUser patient/*.rs", jane)
    assert dropped == ["patient/*.rs"]
    fhir_user = token_identity(ids["john_person"], jane)
    assert fhir_user == ids["rp_jane"]
    basis = access_basis(jane)
    assert basis == {"relationship": ids["rp_jane"], "codes": ["SPS"], "consents": [consent]}
    headers = auth(
        fhir_user,
        scope,
        patient=ids["jane"].split("/")[1],
        extra={"access_basis": basis},
    )
    with httpx.Client(base_url=f"{family.origin}/fhir", timeout=30, headers=headers) as app:
        assert app.get(f"/{ids['jane']}").status_code == 200
        assert app.get(f"/{ids['obs_jane']}").status_code == 200
        # vital signs: the engine would let the Consent through, the narrowed scope does not
        assert app.get(f"/{ids['vitals_jane']}").status_code in (403, 404)
        found = app.get("/Observation", params={"subject": ids["jane"]}).json()
        assert [e["resource"]["id"] for e in found.get("entry", [])] == [
            ids["obs_jane"].split("/")[1]
        ]
        # Mary is not Jane: the same token reads nothing of hers
        assert app.get(f"/{ids['obs_mary']}").status_code == 403
    events = events_naming(db, consent)
    assert events, "the requests' AuditEvents name the Consent"
    assert all(e["agent"][0]["policy"] == [ids["rp_jane"], consent] for e in events)
    assert all(e["agent"][0]["who"]["reference"] == ids["rp_jane"] for e in events)
    searched = family.system.get("/AuditEvent", params={"policy": consent}).json()
    assert {e["resource"]["id"] for e in searched["entry"]} >= {e["id"] for e in events}


def test_a_token_with_a_malformed_basis_is_401(family: World) -> None:
    headers = auth(
        family.ids["rp_mary"], "user/*.rs", extra={"access_basis": {"relationship": "x"}}
    )
    with httpx.Client(base_url=f"{family.origin}/fhir", timeout=30, headers=headers) as app:
        answer = app.get(f"/{family.ids['mary']}")
    assert answer.status_code == 401
    assert "access_basis" in answer.text
