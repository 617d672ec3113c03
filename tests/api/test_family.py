"""The family workflow through HTTP with real tokens: adding dependents (new, on record, from the
Client Registry), its rules, the rollback on failure, the family view, removal, and the access each
relationship yields afterwards."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psycopg
import pytest

from fhir_server.settings import Settings
from fhir_server.storage.database import migrate
from fhir_server.validation import default_validator
from tests.support import resources
from tests.support import world as worlds
from tests.support.databases import drop_database, fresh_database
from tests.support.resources import (
    V2_0131,
    care_team,
    observation,
    parameters,
    patient,
    permit,
    related_person,
    values,
    years_ago,
)
from tests.support.servers import LiveServer
from tests.support.tokens import auth, token
from tests.support.world import (
    NATIONAL,
    World,
    add_child,
    add_child_and_link,
    snapshot,
)
from tests.support.world import add_dependent as add


def add_doe(
    caller: httpx.Client,
    primary: str,
    relationship: str,
    given: str,
    born: str,
    nid: str | None = None,
) -> httpx.Response:
    """`primary`'s `$add-dependent` of a new Doe named `given`, with a national id if given."""
    dependent = patient("Doe", given, born=born)
    if nid is None:
        return add(caller, primary, relationship=relationship, dependent=dependent)
    return add(caller, primary, relationship=relationship, nationalId=nid, dependent=dependent)


def rule(response: httpx.Response) -> str:
    assert response.status_code == 422, response.text
    diagnostics: str = response.json()["issue"][0]["diagnostics"]
    return diagnostics.split(":", 1)[0]


def test_the_doe_family(fam: World, db: psycopg.Connection[Any]) -> None:
    john = fam.patient("John", years_ago(40), fam.nid("john"))
    with fam.client(john) as j:
        jane = add_doe(j, john, "SPOUSE", "Jane", years_ago(38), nid=fam.nid("jane"))
        assert jane.status_code == 201, jane.text
        answer = values(jane.json())
        assert answer["createdPatient"] is True
        jane_ref = answer["dependent"]["reference"]
        links = [p for p in jane.json()["parameter"] if p["name"] == "link"]
        assert len(links) == 2  # a spouse both ways
        mary = values(add_doe(j, john, "CHILD", "Mary", years_ago(12), nid=fam.nid("mary")).json())
        tom = values(add_doe(j, john, "CHILD", "Tom", years_ago(8)).json())
        mary_ref, tom_ref = mary["dependent"]["reference"], tom["dependent"]["reference"]
        # the RelatedPerson stands for John towards Mary: parent
        related = db.execute(
            "SELECT content FROM resources WHERE resource_type = 'RelatedPerson'"
            " AND content->'patient'->>'reference' = %s",
            (mary_ref,),
        ).fetchone()
        assert related is not None
        assert related[0]["relationship"][0]["coding"][0]["code"] == "PRN"

        # what each relationship yields: John sees his minor children's records
        lab = fam.posted(observation(mary_ref, text="lab", category=None))
        assert j.get(f"/Observation/{lab['id']}").status_code == 200
        assert j.get(f"/{jane_ref}").status_code == 200  # an adult spouse: demographics
        jane_lab = fam.posted(observation(jane_ref, text="lab", category=None))
        denied = j.get(f"/Observation/{jane_lab['id']}")
        # outside everything John's identities may see (his own record, his children's); the
        # answer does not say whose compartment the resource is in
        assert denied.status_code == 403
        assert denied.json()["issue"][0]["details"]["coding"][0]["code"] == "invalid_compartment"

        mine = {
            m["patient"]["reference"]: m
            for m in map(_member, j.get(f"/{john}/$family").json()["parameter"])
        }
        assert set(mine) == {jane_ref, mary_ref, tom_ref}
        assert mine[mary_ref]["relationship"] == "CHILD" and mine[mary_ref]["isMinor"] is True
        assert mine[mary_ref]["canViewClinicalData"] is True
        assert mine[jane_ref]["relationship"] == "SPOUSE" and mine[jane_ref]["isMinor"] is False
        assert mine[jane_ref]["canViewClinicalData"] is False

    # Jane logs in: John and the children are her family
    with fam.client(jane_ref) as jn:
        hers = {
            m["patient"]["reference"]: m
            for m in map(_member, jn.get(f"/{jane_ref}/$family").json()["parameter"])
        }
        assert set(hers) == {john, mary_ref, tom_ref}
        assert hers[john]["relationship"] == "SPOUSE"
        assert hers[mary_ref]["canViewClinicalData"] is False  # John's link, not hers
        assert jn.get(f"/{john}").status_code == 200
        # nobody manages someone else's family
        assert add_doe(jn, john, "CHILD", "X", years_ago(1)).status_code == 403


def _member(parameter: dict[str, Any]) -> dict[str, Any]:
    member: dict[str, Any] = {}
    for part in parameter["part"]:
        value = next(v for k, v in part.items() if k != "name")
        if part["name"] == "insuranceCoverage":
            member.setdefault("coverage", []).append(
                {p["name"]: next(v for k, v in p.items() if k != "name") for p in part["part"]}
            )
        else:
            member[part["name"]] = value
    return member


def test_rules_are_refused_by_name(fam: World, db: psycopg.Connection[Any]) -> None:
    primary = fam.patient("Paul", years_ago(30))
    fam.patient("Teen", years_ago(16), fam.nid("teen"))
    fam.patient("Elder", years_ago(60), fam.nid("elder"))
    with fam.client(primary) as p:
        me = p.get(f"/{primary}").json()
        me["identifier"] = [{"system": NATIONAL, "value": fam.nid("paul")}]
        assert fam.system.put(f"/{primary}", json=me).status_code == 200
        assert (
            rule(add(p, primary, relationship="SIBLING", nationalId=fam.nid("paul"))) == "no-self"
        )
        assert (
            rule(add(p, primary, relationship="SPOUSE", nationalId=fam.nid("teen"))) == "spouse-age"
        )
        assert (
            rule(add(p, primary, relationship="CHILD", nationalId=fam.nid("elder")))
            == "child-younger"
        )
        assert (
            rule(add(p, primary, relationship="PARENT", nationalId=fam.nid("teen")))
            == "parent-older"
        )
        assert (
            add(p, primary, relationship="PARENT", nationalId=fam.nid("elder")).status_code == 201
        )
        assert (
            rule(add(p, primary, relationship="PARENT", nationalId=fam.nid("elder")))
            == "already-a-dependent"
        )
        bad = add(p, primary, relationship="COUSIN", nationalId=fam.nid("elder"))
        assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["relationship"]


def test_no_circular_parent_chains(fam: World) -> None:
    a = fam.patient("A", years_ago(50), fam.nid("a"))
    b = fam.patient("B", years_ago(25), fam.nid("b"))
    assert add(fam.system, a, relationship="CHILD", nationalId=fam.nid("b")).status_code == 201
    # A's birth date is corrected to make A younger than B: ages no longer stop a loop
    content = fam.system.get(f"/{a}").json()
    content["birthDate"] = years_ago(10)
    assert fam.system.put(f"/{a}", json=content).status_code == 200
    assert rule(add(fam.system, b, relationship="CHILD", nationalId=fam.nid("a"))) == "no-cycle"


def test_a_failed_add_writes_nothing(fam: World, db: psycopg.Connection[Any]) -> None:
    primary = fam.patient("Rita", years_ago(30))
    before = snapshot(db)
    with fam.client(primary) as p:
        # the new Patient is written before the rules run; the refusal takes it back
        older = add_doe(p, primary, "CHILD", "Older", years_ago(50), nid=fam.nid("older"))
        assert rule(older) == "child-younger"
        invalid = add(
            p,
            primary,
            relationship="CHILD",
            dependent={**patient("Doe", "Bad", born=years_ago(2)), "gender": "robot"},
        )
        assert invalid.status_code == 400
    assert snapshot(db) == before
    assert db.execute(
        "SELECT count(*) FROM search_token WHERE code = 'identifier' AND value = %s",
        (fam.nid("older"),),
    ).fetchone() == (0,)


def test_someone_on_record_is_linked_unverified(fam: World) -> None:
    primary = fam.patient("Ann", years_ago(35))
    sister = fam.patient("Sis", years_ago(33), fam.nid("sis"))
    record = fam.posted(observation(sister, text="x", category=None))
    with fam.client(primary) as p:
        added = add(p, primary, relationship="SIBLING", nationalId=fam.nid("sis"))
        assert added.status_code == 201
        answer = values(added.json())
        assert answer["createdPatient"] is False and answer["dependent"]["reference"] == sister
        link = next(pp for pp in added.json()["parameter"] if pp["name"] == "link")
        assert {"name": "assurance", "valueCode": "level2"} in link["part"]
        assert p.get(f"/Observation/{record['id']}").status_code == 403
        family = {
            m["patient"]["reference"]: m
            for m in map(_member, p.get(f"/{primary}/$family").json()["parameter"])
        }
        assert family[sister]["canViewClinicalData"] is False
        assert "unverified" in family[sister]["why"]


def test_removal_waits_for_coverage_and_ends_access(fam: World) -> None:
    """The specification's removal: the dependent is a beneficiary of the primary's scheme
    (the primary subscribes), so the removal waits for confirmation and then ends it. A
    Coverage of the same child through someone else's scheme is the primary's to see (a
    parent of a minor) but not to end: it neither blocks the removal nor ends with it."""
    primary = fam.patient("Mo", years_ago(40))
    other = fam.patient("Other", years_ago(41))
    with fam.client(primary) as p:
        kid = add_child(p, primary, "Kid", years_ago(6))
        coverage = fam.system.post(
            "/Coverage",
            json=resources.coverage(
                kid, "NHIF", subscriberId="NHIF-12345-03", subscriber={"reference": primary}
            ),
        ).json()
        theirs = fam.system.post(
            "/Coverage",
            json=resources.coverage(
                kid, "AAR", subscriberId="AAR-777", subscriber={"reference": other}
            ),
        ).json()
        family = {
            m["patient"]["reference"]: m
            for m in map(_member, p.get(f"/{primary}/$family").json()["parameter"])
        }
        assert sorted(c["scheme"] for c in family[kid]["coverage"]) == ["AAR", "NHIF"]
        record = fam.posted(observation(kid, text="x", category=None))
        assert p.get(f"/Observation/{record['id']}").status_code == 200
        refused = p.post(f"/{primary}/$remove-dependent", json=parameters(dependent=kid))
        assert refused.status_code == 409 and "NHIF" in refused.text
        assert "AAR" not in refused.text
        done = p.post(f"/{primary}/$remove-dependent", json=parameters(dependent=kid, confirm=True))
        assert done.status_code == 200, done.text
        assert fam.system.get(f"/Coverage/{coverage['id']}").json()["status"] == "cancelled"
        assert fam.system.get(f"/Coverage/{theirs['id']}").json()["status"] == "active"
        assert values(done.json())["endedCoverage"]["reference"] == f"Coverage/{coverage['id']}"
        assert p.get(f"/Observation/{record['id']}").status_code == 403
        assert p.get(f"/{primary}/$family").json()["parameter"] == []
        # soft: the RelatedPerson and its history stay
        related = values(done.json())["ended"]["reference"]
        history = fam.system.get(f"/{related}/_history").json()
        assert history["total"] == 2
        assert history["entry"][0]["resource"]["active"] is False


def test_what_the_workflow_writes_is_valid_r4(fam: World) -> None:
    """The RelatedPersons and Persons the family workflow assembles as dicts (and rewrites on
    removal) are valid R4 by the server's own validator: the check that typed models would give
    (docs/architecture.md, "fhir.resources"), at its cost."""
    validator = default_validator()
    primary = fam.patient("Paul", years_ago(40))
    with fam.client(primary) as p:
        answers = [
            add(p, primary, relationship=relationship, dependent=patient("Doe", given, born=born))
            for relationship, given, born in (
                ("SPOUSE", "Sue", years_ago(38)),
                ("CHILD", "Kim", years_ago(9)),
            )
        ]
        assert all(a.status_code == 201 for a in answers), [a.text for a in answers]
        links = [
            part["valueReference"]["reference"]
            for a in answers
            for link in a.json()["parameter"]
            if link["name"] == "link"
            for part in link["part"]
            if part["name"] in {"relatedPerson", "person"}
        ]
        kid = values(answers[1].json())["dependent"]["reference"]
        removed = p.post(f"/{primary}/$remove-dependent", json=parameters(dependent=kid))
        assert removed.status_code == 200, removed.text
    assert {link.split("/")[0] for link in links} == {"RelatedPerson", "Person"}
    for reference in sorted(set(links)):
        stored = fam.system.get(f"/{reference}").json()
        assert validator.issues(stored) == [], reference


@pytest.fixture(scope="module")
def of_age_at_21(database_url: str) -> Iterator[LiveServer]:
    with LiveServer(Settings(majority_age=21), database_url) as server:
        yield server


def test_the_spouse_age_follows_the_majority_age_setting(
    of_age_at_21: LiveServer, fam: World
) -> None:
    """One majority age (`MAJORITY_AGE`): the family workflow's spouse rule uses the setting the
    engine's minors use, not a number of its own."""
    with httpx.Client(base_url=f"{of_age_at_21.origin}/fhir", timeout=30, headers=auth()) as c:
        later = worlds.make_world(of_age_at_21.origin, c, people=False, tag_length=8)
        primary = later.patient("Paul", years_ago(30))
        later.patient("Nineteen", years_ago(19), later.nid("nineteen"))
        with later.client(primary) as p:
            refused = add(p, primary, relationship="SPOUSE", nationalId=later.nid("nineteen"))
            assert rule(refused) == "spouse-age"
            assert "21 or older" in refused.json()["issue"][0]["diagnostics"]
    # the same pair where majority is at 18 (the default)
    primary = fam.patient("Paul", years_ago(30))
    fam.patient("Nineteen", years_ago(19), fam.nid("nineteen"))
    with fam.client(primary) as p:
        added = add(p, primary, relationship="SPOUSE", nationalId=fam.nid("nineteen"))
        assert added.status_code == 201, added.text


# --- the Client Registry: a second instance of this server ------------------------------------


@pytest.fixture(scope="module")
def registry(admin_url: str) -> Iterator[LiveServer]:
    name, url = fresh_database(admin_url)
    migrate(url)
    with LiveServer(Settings(), url) as server:
        yield server
    drop_database(admin_url, name)


@pytest.fixture(scope="module")
def with_registry(registry: LiveServer, database_url: str) -> Iterator[LiveServer]:
    settings = Settings(
        client_registry_url=f"{registry.origin}/fhir", client_registry_token=token()
    )
    with LiveServer(settings, database_url) as server:
        yield server


def test_a_dependent_found_in_the_client_registry(
    registry: LiveServer, with_registry: LiveServer, client: httpx.Client
) -> None:
    tag = uuid.uuid4().hex[:8]
    national = f"cr-{tag}"
    with httpx.Client(base_url=f"{registry.origin}/fhir", headers=auth()) as cr:
        registered = cr.post(
            "/Patient",
            json={
                **patient("Registry", "Ruth", born=years_ago(9)),
                "identifier": [{"system": NATIONAL, "value": national}],
            },
        )
        assert registered.status_code == 201
    primary = worlds.make_world(with_registry.origin, client, people=False, tag_length=8).patient(
        "Ray", years_ago(38)
    )
    with httpx.Client(
        base_url=f"{with_registry.origin}/fhir", headers=auth(primary, "user/*.cruds")
    ) as p:
        added = add(p, primary, relationship="CHILD", nationalId=national)
        assert added.status_code == 201, added.text
        answer = values(added.json())
        assert answer["createdPatient"] is True
        local = p.get(f"/{answer['dependent']['reference']}").json()
        assert local["name"][0]["family"] == "Registry"
        assert {"system": NATIONAL, "value": national} in local["identifier"]
        # found here now: the registry is not asked again, and the same person is not added twice
        again = add(p, primary, relationship="CHILD", nationalId=national)
        assert rule(again) == "already-a-dependent"


class SlowRegistry(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(1.5)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("failure", ["down", "slow", "broken"])
def test_a_failing_registry_is_a_502_or_504_and_nothing_is_written(
    failure: str, database_url: str, client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    if failure == "slow":
        upstream = ThreadingHTTPServer(("127.0.0.1", 0), SlowRegistry)
    elif failure == "broken":
        upstream = ThreadingHTTPServer(("127.0.0.1", 0), BrokenRegistry)
    else:
        upstream = None
    url = (
        f"http://127.0.0.1:{upstream.server_address[1]}/fhir"
        if upstream
        else "http://127.0.0.1:9/fhir"
    )
    if upstream:
        threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        settings = Settings(client_registry_url=url, client_registry_timeout_seconds=0.5)
        with LiveServer(settings, database_url) as server:
            primary = worlds.make_world(server.origin, client, people=False, tag_length=8).patient(
                "Una", years_ago(30)
            )
            before = snapshot(db)
            with httpx.Client(
                base_url=f"{server.origin}/fhir", headers=auth(primary, "user/*.cruds"), timeout=30
            ) as p:
                response = add_doe(
                    p,
                    primary,
                    "CHILD",
                    "Newborn",
                    years_ago(0, days=3),
                    nid=f"x-{uuid.uuid4().hex}",
                )
            assert response.status_code == {"slow": 504}.get(failure, 502), response.text
            assert response.json()["resourceType"] == "OperationOutcome"
            assert snapshot(db) == before
    finally:
        if upstream:
            upstream.shutdown()
            upstream.server_close()


class BrokenRegistry(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>oops</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_at_18_the_parent_needs_the_childs_consent(fam: World) -> None:
    john = fam.patient("John", years_ago(45))
    with fam.client(john) as j:
        mary = values(add_doe(j, john, "CHILD", "Mary", years_ago(18, days=-1)).json())[
            "dependent"
        ]["reference"]
        lab = fam.posted(observation(mary, text="hb"))
        assert j.get(f"/Observation/{lab['id']}").status_code == 200
        # her birthday
        content = fam.system.get(f"/{mary}").json()
        content["birthDate"] = years_ago(18)
        assert fam.system.put(f"/{mary}", json=content).status_code == 200
        assert j.get(f"/Observation/{lab['id']}").status_code == 403
        assert j.get(f"/{mary}").status_code == 200  # still her demographics
        # Mary, an adult now, finds her father's link and consents to her lab results
        with fam.client(mary) as m:
            links = m.get("/RelatedPerson", params={"patient": mary}).json()
            father = next(e["resource"] for e in links["entry"])
            consent = resources.consent(
                mary, permit(f"RelatedPerson/{father['id']}", "LAB_RESULTS")
            )
            granted = m.post("/Consent", json=consent)
            assert granted.status_code == 201, granted.text
        assert j.get(f"/Observation/{lab['id']}").status_code == 200


def test_a_guardian_consents_for_a_minor_but_never_to_itself(
    fam: World, db: psycopg.Connection[Any]
) -> None:
    john = fam.patient("John", years_ago(40))
    with fam.client(john) as j:
        kid, own_link = add_child_and_link(j, john, "Kim", years_ago(7))
        granny = fam.posted(related_person(kid, "GRMTH", active=None))

        def consent(actor: str) -> dict[str, Any]:
            return resources.consent(kid, permit(actor, "APPOINTMENTS"))

        assert j.post("/Consent", json=consent(f"RelatedPerson/{granny['id']}")).status_code == 201
        before = snapshot(db)
        to_self = j.post("/Consent", json=consent(own_link))
        assert to_self.status_code == 403
        assert snapshot(db) == before


def test_emergency_contacts_are_listed_with_their_preferred_telecom(fam: World) -> None:
    patient = fam.patient("Eve", years_ago(70))

    def contact(
        name: str, relationship: str, telecom: list[dict[str, Any]], active: bool | None = None
    ) -> str:
        return fam.create(
            related_person(
                patient,
                relationship,
                system=V2_0131,
                active=active,
                name=[{"family": name}],
                telecom=telecom,
            )
        )

    neighbour = contact(
        "Neighbour",
        "C",
        [
            {"system": "email", "value": "n@example.org", "rank": 2},
            {"system": "phone", "value": "+254700000001", "rank": 1},
        ],
    )
    contact("Former", "C", [{"system": "phone", "value": "+254700000002"}], active=False)
    contact("Employer", "E", [{"system": "phone", "value": "+254700000003"}])
    with fam.client(patient) as p:
        listed = p.get(f"/{patient}/$emergency-contacts")
        assert listed.status_code == 200, listed.text
        contacts = [{part["name"]: part for part in c["part"]} for c in listed.json()["parameter"]]
        assert [c["relatedPerson"]["valueReference"]["reference"] for c in contacts] == [neighbour]
        assert contacts[0]["telecom"]["valueContactPoint"]["value"] == "+254700000001"
    stranger = fam.patient("Stranger", years_ago(30))
    with fam.client(stranger) as s:
        assert s.get(f"/{patient}/$emergency-contacts").status_code == 403


def test_a_practitioner_loses_access_when_the_care_team_ends(fam: World) -> None:
    patient = fam.patient("Cara", years_ago(50))
    doctor = fam.system.post("/Practitioner", json={"resourceType": "Practitioner"}).json()
    team = fam.posted(care_team(patient, f"Practitioner/{doctor['id']}"))
    record = fam.posted(observation(patient, text="x", category=None))
    with fam.client(f"Practitioner/{doctor['id']}") as d:
        assert d.get(f"/Observation/{record['id']}").status_code == 200
        assert (
            fam.system.put(
                f"/CareTeam/{team['id']}", json={**team, "status": "inactive"}
            ).status_code
            == 200
        )
        assert d.get(f"/Observation/{record['id']}").status_code == 403
        # a general-practitioner link gives it back
        content = fam.system.get(f"/{patient}").json()
        content["generalPractitioner"] = [{"reference": f"Practitioner/{doctor['id']}"}]
        assert fam.system.put(f"/{patient}", json=content).status_code == 200
        assert d.get(f"/Observation/{record['id']}").status_code == 200
