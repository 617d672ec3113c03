"""Interoperability: the maintained Python FHIR clients (`fhirpy`, and `fhirclient` from SMART)
drive the server as their users would: create, read, update, search with paging, a transaction."""

from __future__ import annotations

import uuid

from fhirclient import client as smart_client
from fhirclient.models.patient import Patient as SmartPatient
from fhirpy import SyncFHIRClient

from tests.conftest import LiveServer, token


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
