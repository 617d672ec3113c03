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

from compartments.engine import CONSENT_SCOPE_SYSTEM
from fhir_server.settings import Settings
from fhir_server.storage.database import migrate
from fhir_server.validation import default_validator
from tests.access_world import snapshot, years_ago
from tests.conftest import LiveServer, _drop_database, _fresh_database, auth, token

NATIONAL = "http://nationalid.gov.ke"
# the actor role of a Consent's grantee (information recipient)
GRANTEE = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}
    ]
}


def scope_consent(patient: str, actor: str, scope: str) -> dict[str, Any]:
    """An active Consent of `patient` granting `actor` one of the server's data scopes."""
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": patient},
        "provision": {
            "type": "permit",
            "actor": [{"role": GRANTEE, "reference": {"reference": actor}}],
            "code": [{"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": scope}]}],
        },
    }


def params(**values: Any) -> dict[str, Any]:
    parameter = []
    for name, value in values.items():
        if isinstance(value, dict) and "resourceType" in value:
            parameter.append({"name": name, "resource": value})
        elif isinstance(value, bool):
            parameter.append({"name": name, "valueBoolean": value})
        elif name == "relationship":
            parameter.append({"name": name, "valueCode": value})
        elif name == "dependent" and isinstance(value, str):
            parameter.append({"name": name, "valueReference": {"reference": value}})
        else:
            parameter.append({"name": name, "valueString": value})
    return {"resourceType": "Parameters", "parameter": parameter}


def person(family: str, given: str, born: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "name": [{"family": family, "given": [given]}],
        "birthDate": born,
    }


def values(parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        p["name"]: next(v for k, v in p.items() if k != "name") for p in parameters["parameter"]
    }


class Family:
    def __init__(self, server: LiveServer, system: httpx.Client) -> None:
        self.server = server
        self.system = system
        self.tag = uuid.uuid4().hex[:8]

    def nid(self, name: str) -> str:
        return f"{name}-{self.tag}"

    def patient(self, given: str, born: str, national: str | None = None) -> str:
        body = person("Doe", given, born)
        if national:
            body["identifier"] = [{"system": NATIONAL, "value": national}]
        response = self.system.post("/Patient", json=body)
        assert response.status_code == 201, response.text
        return f"Patient/{response.json()['id']}"

    def as_(self, who: str) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.server.origin}/fhir", timeout=30, headers=auth(who, "user/*.cruds")
        )


@pytest.fixture
def fam(live_server: LiveServer, client: httpx.Client) -> Family:
    return Family(live_server, client)


def add(caller: httpx.Client, primary: str, **values_: Any) -> httpx.Response:
    return caller.post(f"/{primary}/$add-dependent", json=params(**values_))


def rule(response: httpx.Response) -> str:
    assert response.status_code == 422, response.text
    diagnostics: str = response.json()["issue"][0]["diagnostics"]
    return diagnostics.split(":", 1)[0]


def test_the_doe_family(fam: Family, db: psycopg.Connection[Any]) -> None:
    john = fam.patient("John", years_ago(40), fam.nid("john"))
    with fam.as_(john) as j:
        jane = add(
            j,
            john,
            relationship="SPOUSE",
            nationalId=fam.nid("jane"),
            dependent=person("Doe", "Jane", years_ago(38)),
        )
        assert jane.status_code == 201, jane.text
        answer = values(jane.json())
        assert answer["createdPatient"] is True
        jane_ref = answer["dependent"]["reference"]
        links = [p for p in jane.json()["parameter"] if p["name"] == "link"]
        assert len(links) == 2  # a spouse both ways
        mary = values(
            add(
                j,
                john,
                relationship="CHILD",
                nationalId=fam.nid("mary"),
                dependent=person("Doe", "Mary", years_ago(12)),
            ).json()
        )
        tom = values(
            add(j, john, relationship="CHILD", dependent=person("Doe", "Tom", years_ago(8))).json()
        )
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
        lab = fam.system.post(
            "/Observation",
            json={
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "lab"},
                "subject": {"reference": mary_ref},
            },
        ).json()
        assert j.get(f"/Observation/{lab['id']}").status_code == 200
        assert j.get(f"/{jane_ref}").status_code == 200  # an adult spouse: demographics
        jane_lab = fam.system.post(
            "/Observation",
            json={
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "lab"},
                "subject": {"reference": jane_ref},
            },
        ).json()
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
    with fam.as_(jane_ref) as jn:
        hers = {
            m["patient"]["reference"]: m
            for m in map(_member, jn.get(f"/{jane_ref}/$family").json()["parameter"])
        }
        assert set(hers) == {john, mary_ref, tom_ref}
        assert hers[john]["relationship"] == "SPOUSE"
        assert hers[mary_ref]["canViewClinicalData"] is False  # John's link, not hers
        assert jn.get(f"/{john}").status_code == 200
        # nobody manages someone else's family
        assert (
            add(
                jn, john, relationship="CHILD", dependent=person("Doe", "X", years_ago(1))
            ).status_code
            == 403
        )


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


def test_rules_are_refused_by_name(fam: Family, db: psycopg.Connection[Any]) -> None:
    primary = fam.patient("Paul", years_ago(30))
    fam.patient("Teen", years_ago(16), fam.nid("teen"))
    fam.patient("Elder", years_ago(60), fam.nid("elder"))
    with fam.as_(primary) as p:
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


def test_no_circular_parent_chains(fam: Family) -> None:
    a = fam.patient("A", years_ago(50), fam.nid("a"))
    b = fam.patient("B", years_ago(25), fam.nid("b"))
    assert add(fam.system, a, relationship="CHILD", nationalId=fam.nid("b")).status_code == 201
    # A's birth date is corrected to make A younger than B: ages no longer stop a loop
    content = fam.system.get(f"/{a}").json()
    content["birthDate"] = years_ago(10)
    assert fam.system.put(f"/{a}", json=content).status_code == 200
    assert rule(add(fam.system, b, relationship="CHILD", nationalId=fam.nid("a"))) == "no-cycle"


def test_a_failed_add_writes_nothing(fam: Family, db: psycopg.Connection[Any]) -> None:
    primary = fam.patient("Rita", years_ago(30))
    before = snapshot(db)
    with fam.as_(primary) as p:
        # the new Patient is written before the rules run; the refusal takes it back
        older = add(
            p,
            primary,
            relationship="CHILD",
            nationalId=fam.nid("older"),
            dependent=person("Doe", "Older", years_ago(50)),
        )
        assert rule(older) == "child-younger"
        invalid = add(
            p,
            primary,
            relationship="CHILD",
            dependent={**person("Doe", "Bad", years_ago(2)), "gender": "robot"},
        )
        assert invalid.status_code == 400
    assert snapshot(db) == before
    assert db.execute(
        "SELECT count(*) FROM search_token WHERE code = 'identifier' AND value = %s",
        (fam.nid("older"),),
    ).fetchone() == (0,)


def test_someone_on_record_is_linked_unverified(fam: Family) -> None:
    primary = fam.patient("Ann", years_ago(35))
    sister = fam.patient("Sis", years_ago(33), fam.nid("sis"))
    record = fam.system.post(
        "/Observation",
        json={
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": sister},
        },
    ).json()
    with fam.as_(primary) as p:
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


def test_removal_waits_for_coverage_and_ends_access(fam: Family) -> None:
    primary = fam.patient("Mo", years_ago(40))
    with fam.as_(primary) as p:
        kid = values(
            add(
                p, primary, relationship="CHILD", dependent=person("Doe", "Kid", years_ago(6))
            ).json()
        )["dependent"]["reference"]
        coverage = fam.system.post(
            "/Coverage",
            json={
                "resourceType": "Coverage",
                "status": "active",
                "beneficiary": {"reference": kid},
                "payor": [{"display": "NHIF"}],
                "subscriberId": "NHIF-12345-03",
            },
        ).json()
        family = {
            m["patient"]["reference"]: m
            for m in map(_member, p.get(f"/{primary}/$family").json()["parameter"])
        }
        assert family[kid]["coverage"][0]["scheme"] == "NHIF"
        record = fam.system.post(
            "/Observation",
            json={
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": kid},
            },
        ).json()
        assert p.get(f"/Observation/{record['id']}").status_code == 200
        refused = p.post(f"/{primary}/$remove-dependent", json=params(dependent=kid))
        assert refused.status_code == 409 and "NHIF" in refused.text
        done = p.post(f"/{primary}/$remove-dependent", json=params(dependent=kid, confirm=True))
        assert done.status_code == 200, done.text
        assert fam.system.get(f"/Coverage/{coverage['id']}").json()["status"] == "cancelled"
        assert p.get(f"/Observation/{record['id']}").status_code == 403
        assert p.get(f"/{primary}/$family").json()["parameter"] == []
        # soft: the RelatedPerson and its history stay
        related = values(done.json())["ended"]["reference"]
        history = fam.system.get(f"/{related}/_history").json()
        assert history["total"] == 2
        assert history["entry"][0]["resource"]["active"] is False


def test_what_the_workflow_writes_is_valid_r4(fam: Family) -> None:
    """The RelatedPersons and Persons the family workflow assembles as dicts (and rewrites on
    removal) are valid R4 by the server's own validator: the check that typed models would give
    (docs/architecture.md, "fhir.resources"), at its cost."""
    validator = default_validator()
    primary = fam.patient("Paul", years_ago(40))
    with fam.as_(primary) as p:
        answers = [
            add(p, primary, relationship=relationship, dependent=person("Doe", given, born))
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
        removed = p.post(f"/{primary}/$remove-dependent", json=params(dependent=kid))
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
    of_age_at_21: LiveServer, fam: Family
) -> None:
    """One majority age (`MAJORITY_AGE`): the family workflow's spouse rule uses the setting the
    engine's minors use, not a number of its own."""
    with httpx.Client(base_url=f"{of_age_at_21.origin}/fhir", timeout=30, headers=auth()) as c:
        later = Family(of_age_at_21, c)
        primary = later.patient("Paul", years_ago(30))
        later.patient("Nineteen", years_ago(19), later.nid("nineteen"))
        with later.as_(primary) as p:
            refused = add(p, primary, relationship="SPOUSE", nationalId=later.nid("nineteen"))
            assert rule(refused) == "spouse-age"
            assert "21 or older" in refused.json()["issue"][0]["diagnostics"]
    # the same pair where majority is at 18 (the default)
    primary = fam.patient("Paul", years_ago(30))
    fam.patient("Nineteen", years_ago(19), fam.nid("nineteen"))
    with fam.as_(primary) as p:
        added = add(p, primary, relationship="SPOUSE", nationalId=fam.nid("nineteen"))
        assert added.status_code == 201, added.text


# --- the Client Registry: a second instance of this server ------------------------------------


@pytest.fixture(scope="module")
def registry(admin_url: str) -> Iterator[LiveServer]:
    name, url = _fresh_database(admin_url)
    migrate(url)
    with LiveServer(Settings(), url) as server:
        yield server
    _drop_database(admin_url, name)


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
                **person("Registry", "Ruth", years_ago(9)),
                "identifier": [{"system": NATIONAL, "value": national}],
            },
        )
        assert registered.status_code == 201
    primary = Family(with_registry, client).patient("Ray", years_ago(38))
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
            primary = Family(server, client).patient("Una", years_ago(30))
            before = snapshot(db)
            with httpx.Client(
                base_url=f"{server.origin}/fhir", headers=auth(primary, "user/*.cruds"), timeout=30
            ) as p:
                response = add(
                    p,
                    primary,
                    relationship="CHILD",
                    nationalId=f"x-{uuid.uuid4().hex}",
                    dependent=person("Doe", "Newborn", years_ago(0, days=3)),
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


def test_at_18_the_parent_needs_the_childs_consent(fam: Family) -> None:
    john = fam.patient("John", years_ago(45))
    with fam.as_(john) as j:
        mary = values(
            add(
                j,
                john,
                relationship="CHILD",
                dependent=person("Doe", "Mary", years_ago(18, days=-1)),
            ).json()
        )["dependent"]["reference"]
        lab = fam.system.post(
            "/Observation",
            json={
                "resourceType": "Observation",
                "status": "final",
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                "code": "laboratory",
                            }
                        ]
                    }
                ],
                "code": {"text": "hb"},
                "subject": {"reference": mary},
            },
        ).json()
        assert j.get(f"/Observation/{lab['id']}").status_code == 200
        # her birthday
        content = fam.system.get(f"/{mary}").json()
        content["birthDate"] = years_ago(18)
        assert fam.system.put(f"/{mary}", json=content).status_code == 200
        assert j.get(f"/Observation/{lab['id']}").status_code == 403
        assert j.get(f"/{mary}").status_code == 200  # still her demographics
        # Mary, an adult now, finds her father's link and consents to her lab results
        with fam.as_(mary) as m:
            links = m.get("/RelatedPerson", params={"patient": mary}).json()
            father = next(e["resource"] for e in links["entry"])
            consent = scope_consent(mary, f"RelatedPerson/{father['id']}", "LAB_RESULTS")
            granted = m.post("/Consent", json=consent)
            assert granted.status_code == 201, granted.text
        assert j.get(f"/Observation/{lab['id']}").status_code == 200


def test_a_guardian_consents_for_a_minor_but_never_to_itself(
    fam: Family, db: psycopg.Connection[Any]
) -> None:
    john = fam.patient("John", years_ago(40))
    with fam.as_(john) as j:
        added = add(j, john, relationship="CHILD", dependent=person("Doe", "Kim", years_ago(7)))
        kid = values(added.json())["dependent"]["reference"]
        mine = next(p for p in added.json()["parameter"] if p["name"] == "link")
        own_link = next(
            p["valueReference"]["reference"] for p in mine["part"] if p["name"] == "relatedPerson"
        )
        granny = fam.system.post(
            "/RelatedPerson",
            json={
                "resourceType": "RelatedPerson",
                "patient": {"reference": kid},
                "relationship": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                                "code": "GRMTH",
                            }
                        ]
                    }
                ],
            },
        ).json()

        def consent(actor: str) -> dict[str, Any]:
            return scope_consent(kid, actor, "APPOINTMENTS")

        assert j.post("/Consent", json=consent(f"RelatedPerson/{granny['id']}")).status_code == 201
        before = snapshot(db)
        to_self = j.post("/Consent", json=consent(own_link))
        assert to_self.status_code == 403
        assert snapshot(db) == before


def test_emergency_contacts_are_listed_with_their_preferred_telecom(fam: Family) -> None:
    patient = fam.patient("Eve", years_ago(70))

    def contact(name: str, relationship: str, telecom: list[dict[str, Any]], **extra: Any) -> str:
        response = fam.system.post(
            "/RelatedPerson",
            json={
                "resourceType": "RelatedPerson",
                "patient": {"reference": patient},
                "name": [{"family": name}],
                "relationship": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0131",
                                "code": relationship,
                            }
                        ]
                    }
                ],
                "telecom": telecom,
                **extra,
            },
        )
        assert response.status_code == 201, response.text
        return f"RelatedPerson/{response.json()['id']}"

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
    with fam.as_(patient) as p:
        listed = p.get(f"/{patient}/$emergency-contacts")
        assert listed.status_code == 200, listed.text
        contacts = [{part["name"]: part for part in c["part"]} for c in listed.json()["parameter"]]
        assert [c["relatedPerson"]["valueReference"]["reference"] for c in contacts] == [neighbour]
        assert contacts[0]["telecom"]["valueContactPoint"]["value"] == "+254700000001"
    stranger = fam.patient("Stranger", years_ago(30))
    with fam.as_(stranger) as s:
        assert s.get(f"/{patient}/$emergency-contacts").status_code == 403


def test_a_practitioner_loses_access_when_the_care_team_ends(fam: Family) -> None:
    patient = fam.patient("Cara", years_ago(50))
    doctor = fam.system.post("/Practitioner", json={"resourceType": "Practitioner"}).json()
    team = fam.system.post(
        "/CareTeam",
        json={
            "resourceType": "CareTeam",
            "status": "active",
            "subject": {"reference": patient},
            "participant": [{"member": {"reference": f"Practitioner/{doctor['id']}"}}],
        },
    ).json()
    record = fam.system.post(
        "/Observation",
        json={
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": patient},
        },
    ).json()
    with fam.as_(f"Practitioner/{doctor['id']}") as d:
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
