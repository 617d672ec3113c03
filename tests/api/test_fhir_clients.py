"""Interoperability: the maintained Python FHIR clients (`fhirpy`, and `fhirclient` from SMART)
drive the server as their users would: create, read, update, search with paging, a transaction."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg
import pytest
from fhirclient import client as smart_client
from fhirclient.models.patient import Patient as SmartPatient
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome

from tests.support.servers import LiveServer
from tests.support.tokens import token


def test_fhirpy(live_server: LiveServer) -> None:
    family = "Fhirpy" + uuid.uuid4().hex[:8]
    fhir = SyncFHIRClient(f"{live_server.origin}/fhir", authorization=f"Bearer {token()}")
    patient = fhir.resource(
        "Patient", name=[{"family": family, "given": ["Ann"]}], birthDate="1990-01-01"
    )
    patient.save()
    assert patient.id
    fetched = fhir.reference("Patient", patient.id).to_resource()
    assert fetched["name"][0]["family"] == family
    fetched["gender"] = "female"
    fetched.save()
    assert fhir.reference("Patient", patient.id).to_resource()["meta"]["versionId"] == "2"
    for i in range(4):
        fhir.resource("Patient", name=[{"family": family, "given": [f"P{i}"]}]).save()
    found = fhir.resources("Patient").search(family=family).limit(2).fetch_all()  # follows `next`
    assert len(found) == 5 and len({p.id for p in found}) == 5
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
                "resource": {"resourceType": "Patient", "name": [{"family": family}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "x"},
                    "subject": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    answer = fhir.execute("", method="post", data=bundle)
    assert [e["response"]["status"][:3] for e in answer["entry"]] == ["201", "201"]


def test_smart_fhirclient(live_server: LiveServer) -> None:
    family = "Smart" + uuid.uuid4().hex[:8]
    smart = smart_client.FHIRClient(
        settings={"app_id": "tests", "api_base": f"{live_server.origin}/fhir"}
    )
    smart.server.session.headers["Authorization"] = f"Bearer {token()}"
    patient = SmartPatient(
        {"name": [{"family": family, "given": ["Bo"]}], "birthDate": "1985-02-03"}
    )
    created = patient.create(smart.server)
    id = created["id"]
    read = SmartPatient.read(id, smart.server)
    assert read.name[0].family == family and read.birthDate.isostring == "1985-02-03"
    read.gender = "male"
    read.update(smart.server)
    assert SmartPatient.read(id, smart.server).gender == "male"
    for i in range(3):
        SmartPatient({"name": [{"family": family, "given": [f"S{i}"]}]}).create(smart.server)
    pages = list(
        SmartPatient.where(struct={"family": family, "_count": "2"}).perform_iter(smart.server)
    )
    ids = {e.resource.id for page in pages for e in page.entry or []}
    assert len(pages) == 2  # two pages of two, through the server's `next` links
    assert len(ids) == 4 and id in ids


def test_every_fhirpy_search_call(live_server: LiveServer) -> None:
    """Each search call of fhirpy's SearchSet, as its users write it, against the live server:
    the parameters it sends are R4's or documented aliases (docs/search.md, "Aliases")."""
    family = "Calls" + uuid.uuid4().hex[:8]
    fhir = SyncFHIRClient(f"{live_server.origin}/fhir", authorization=f"Bearer {token()}")
    people = []
    for i, born in enumerate(("1970-05-01", "1980-05-01", "1990-05-01")):
        person = fhir.resource(
            "Patient",
            name=[{"family": family, "given": [f"G{i}"]}],
            birthDate=born,
            gender="female",
            text={
                "status": "generated",
                "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>',
            },
        )
        person.save()
        people.append(person)
    observation = fhir.resource(
        "Observation",
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        subject={"reference": f"Patient/{people[0].id}"},
    )
    observation.save()
    patients = fhir.resources("Patient").search(family=family)
    # count(): `_count=0&_totalMethod=count` (strict handling refused `_totalMethod`)
    assert patients.count() == 3
    # limit(), first(), get(): `_count`, `_id`
    assert patients.first() is not None
    assert fhir.resources("Patient").search(_id=people[1].id).get().id == people[1].id
    assert len(patients.limit(1).fetch()) == 1
    # sort(): `_sort=-birthdate`
    ordered = patients.sort("-birthdate").fetch()
    assert [p.id for p in ordered] == [p.id for p in reversed(people)]
    # search with prefixes and modifiers: `birthdate=ge1980-01-01`, `family:exact`
    assert len(patients.search(birthdate__ge="1980-01-01").fetch()) == 2
    assert len(fhir.resources("Patient").search(family__exact=family).fetch()) == 3
    # elements(): `_elements=name,id,resourceType`, and exclude=True: `_elements=-text`
    kept = patients.elements("name").fetch()[0]
    assert "name" in kept and "birthDate" not in kept
    without = patients.elements("text", exclude=True).fetch()[0]
    assert "text" not in without and without["birthDate"] and without["name"]
    assert any(t["code"] == "SUBSETTED" for t in without["meta"]["tag"])
    # include() / revinclude(), also with fhirpy's `recursive=True` (`_include:recursive`)
    observations = fhir.resources("Observation").search(subject=f"Patient/{people[0].id}")
    bundle = observations.include("Observation", "subject").fetch_raw()
    assert {e.resource.resourceType for e in bundle.entry} == {"Observation", "Patient"}
    recursive = observations.include("Observation", "subject", recursive=True).fetch_raw()
    assert {e.resource.resourceType for e in recursive.entry} == {"Observation", "Patient"}
    iterate = observations.include("Observation", "subject", iterate=True).fetch_raw()
    assert {e.resource.resourceType for e in iterate.entry} == {"Observation", "Patient"}
    reverse = patients.search(_id=people[0].id).revinclude("Observation", "subject").fetch_raw()
    assert {e.resource.resourceType for e in reverse.entry} == {"Observation", "Patient"}
    # has(): `_has:Observation:subject:code=8867-4`
    assert [p.id for p in patients.has("Observation", "subject", code="8867-4").fetch()] == [
        people[0].id
    ]
    # refresh(): a read with fhirpy's `If-None-Match`
    people[2].refresh()
    assert people[2]["meta"]["versionId"] == "1"


def test_every_fhirclient_search_form(live_server: LiveServer) -> None:
    """fhirclient's search structure (`$gt`, `$lte`, `$asc`, `$desc`, `$exact`, `$missing`,
    `$or`) and `resource.search()` against the live server."""
    family = "Forms" + uuid.uuid4().hex[:8]
    smart = smart_client.FHIRClient(
        settings={"app_id": "tests", "api_base": f"{live_server.origin}/fhir"}
    )
    smart.server.session.headers["Authorization"] = f"Bearer {token()}"
    ids = []
    for i, born in enumerate(("1970-05-01", "1980-05-01", "1990-05-01")):
        created = SmartPatient(
            {"name": [{"family": family, "given": [f"F{i}"]}], "birthDate": born}
        ).create(smart.server)
        ids.append(created["id"])

    def found(struct: dict[str, object]) -> list[str]:
        search = SmartPatient.where(struct={"family": family, **struct})
        return [e.resource.id for b in search.perform_iter(smart.server) for e in b.entry or []]

    assert set(found({"birthdate": {"$gt": "1975-01-01"}})) == set(ids[1:])
    assert set(found({"birthdate": {"$gte": "1980-05-01"}})) == set(ids[1:])
    assert set(found({"birthdate": {"$lt": "1980-05-01"}})) == {ids[0]}
    assert set(found({"birthdate": {"$lte": "1980-05-01"}})) == set(ids[:2])
    assert found({"_sort": {"$asc": "birthdate"}}) == ids
    assert found({"_sort": {"$desc": "birthdate"}}) == list(reversed(ids))
    assert set(found({"family": {"$exact": family}})) == set(ids)
    assert set(found({"gender": {"$missing": "true"}})) == set(ids)
    assert set(found({"birthdate": {"$or": ["1970-05-01", "1990-05-01"]}})) == {ids[0], ids[2]}
    # `resource.search()` adds fhirclient's `id`, which is R4's `_id`
    me = SmartPatient.read(ids[1], smart.server)
    pages = me.search({"family": family}).perform_iter(smart.server)
    assert [e.resource.id for page in pages for e in page.entry or []] == [ids[1]]


def test_fhirpy_conditional_create_in_the_url_is_refused_not_misread(
    live_server: LiveServer, db: psycopg.Connection[Any]
) -> None:
    """fhirpy's `get_or_create` and `resource.create(**search)` put the criteria in the URL of
    the POST (another server's convention); ignored, they would make a duplicate each time."""
    family = "Twice" + uuid.uuid4().hex[:8]
    fhir = SyncFHIRClient(f"{live_server.origin}/fhir", authorization=f"Bearer {token()}")
    fhir.resource("Patient", name=[{"family": family}]).save()
    before = db.execute("SELECT count(*) FROM resource_history").fetchone()
    search = fhir.resources("Patient").search(family=family)
    with pytest.raises(OperationOutcome) as refused:
        search.get_or_create(fhir.resource("Patient", name=[{"family": family}]))
    assert "If-None-Exist" in str(refused.value)
    assert db.execute("SELECT count(*) FROM resource_history").fetchone() == before
    assert search.count() == 1
    # `_format` and `_pretty` stay welcome in any URL
    created = httpx.post(
        f"{live_server.origin}/fhir/Patient",
        params={"_format": "json", "_pretty": "true"},
        json={"resourceType": "Patient"},
        headers={"Authorization": f"Bearer {token()}"},
    )
    assert created.status_code == 201
