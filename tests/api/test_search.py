"""Search over HTTP: each parameter type and modifier, result parameters, paging, strictness.

Each test builds its own small world with a unique tag and searches with `_tag=` so that tests
do not see each other's data.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest

from tests.support.resources import observation, patient


class World:
    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.code = uuid.uuid4().hex
        self.tag = f"urn:test:search|{self.code}"
        self.ids: dict[str, str] = {}

    def add(self, name: str, resource: dict[str, Any]) -> str:
        body = {**resource, "meta": {"tag": [{"system": "urn:test:search", "code": self.code}]}}
        response = self.client.post(f"/{resource['resourceType']}", json=body)
        assert response.status_code == 201, response.text
        self.ids[name] = response.json()["id"]
        return self.ids[name]

    def search(self, query: str, *, status: int = 200, **headers: str) -> dict[str, Any]:
        separator = "&" if "?" in query else "?"
        response = self.client.get(f"/{query}{separator}_tag={self.tag}", headers=headers)
        assert response.status_code == status, response.text
        result: dict[str, Any] = response.json()
        return result

    def names(self, query: str, **headers: str) -> list[str]:
        """The names (keys of `ids`) of the matches, in the order returned."""
        by_id = {v: k for k, v in self.ids.items()}
        bundle = self.search(query, **headers)
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
        return [
            by_id.get(e["resource"]["id"], e["resource"]["id"])
            for e in bundle.get("entry", [])
            if e["search"]["mode"] == "match"
        ]

    def found(self, query: str) -> set[str]:
        return set(self.names(query))


@pytest.fixture
def world(client: httpx.Client) -> World:
    return World(client)


# --- string ------------------------------------------------------------------------------------


def test_string_starts_with_ignoring_case_and_accents(world: World) -> None:
    world.add("muller", patient("Müller", "Hans"))
    world.add("mueller", patient("Mueller", "Anna"))
    world.add("MULL", patient("MULLIGAN", "Ann"))
    assert world.found("Patient?name=mull") == {"muller", "MULL"}
    assert world.found("Patient?family=MÜL") == {"muller", "MULL"}
    assert world.found("Patient?given=ann") == {"mueller", "MULL"}
    assert world.found("Patient?name=hans") == {"muller"}
    assert world.found("Patient?name=ller") == set()


def test_string_exact_and_contains(world: World) -> None:
    world.add("muller", patient("Müller"))
    world.add("upper", patient("MÜLLER"))
    assert world.found("Patient?name:exact=Müller") == {"muller"}
    assert world.found("Patient?name:exact=muller") == set()
    assert world.found("Patient?name:contains=LLE") == {"muller", "upper"}


def test_string_or_and_and(world: World) -> None:
    world.add("a", patient("Alpha", "One"))
    world.add("b", patient("Beta", "One"))
    world.add("c", patient("Gamma", "Two"))
    assert world.found("Patient?family=alpha,beta") == {"a", "b"}
    assert world.found("Patient?family=alpha,gamma&given=one") == {"a"}
    assert world.found("Patient?name=beta&name=one") == {"b"}


def test_address_and_missing(world: World) -> None:
    world.add("city", patient("X", address=[{"city": "Zürich", "postalCode": "8001"}]))
    world.add("none", patient("Y"))
    assert world.found("Patient?address=zurich") == {"city"}
    assert world.found("Patient?address-postalcode=800") == {"city"}
    assert world.found("Patient?address:missing=true") == {"none"}
    assert world.found("Patient?address:missing=false") == {"city"}


# --- token -------------------------------------------------------------------------------------


def test_token_forms(world: World) -> None:
    world.add("sys", patient("A", identifier=[{"system": "urn:mrn", "value": "123"}]))
    world.add("other", patient("B", identifier=[{"system": "urn:other", "value": "123"}]))
    world.add("nosys", patient("C", identifier=[{"value": "123"}]))
    assert world.found("Patient?identifier=123") == {"sys", "other", "nosys"}
    assert world.found("Patient?identifier=urn:mrn|123") == {"sys"}
    assert world.found("Patient?identifier=|123") == {"nosys"}
    assert world.found("Patient?identifier=urn:other|") == {"other"}
    assert world.found("Patient?identifier=urn:mrn|999") == set()


def test_token_code_with_its_implicit_system_and_not(world: World) -> None:
    world.add("f", patient("A", gender="female"))
    world.add("m", patient("B", gender="male"))
    world.add("u", patient("C"))
    assert world.found("Patient?gender=female") == {"f"}
    assert world.found("Patient?gender=http://hl7.org/fhir/administrative-gender|male") == {"m"}
    # :not also matches resources without the element (R4)
    assert world.found("Patient?gender:not=female") == {"m", "u"}


def test_token_codeable_concept_and_text(world: World) -> None:
    code = {
        "coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}],
        "text": "Pulse",
    }
    world.add("hr", {"resourceType": "Observation", "status": "final", "code": code})
    world.add(
        "other", {"resourceType": "Observation", "status": "final", "code": {"text": "Weight"}}
    )
    assert world.found("Observation?code=8867-4") == {"hr"}
    assert world.found("Observation?code=http://loinc.org|8867-4") == {"hr"}
    assert world.found("Observation?code:text=heart") == {"hr"}
    assert world.found("Observation?code:text=puls") == {"hr"}
    assert world.found("Observation?code:text=weig") == {"other"}


def test_boolean_token(world: World) -> None:
    world.add("yes", patient("A", active=True))
    world.add("no", patient("B", active=False))
    assert world.found("Patient?active=true") == {"yes"}
    assert world.found("Patient?active=false") == {"no"}


# --- date --------------------------------------------------------------------------------------


def test_date_prefixes_and_precision(world: World) -> None:
    world.add("d1980", patient("A", birthDate="1980-05-17"))
    world.add("d1990", patient("B", birthDate="1990"))
    world.add("d2000", patient("C", birthDate="2000-01"))
    assert world.found("Patient?birthdate=1980") == {"d1980"}
    assert world.found("Patient?birthdate=1980-05-17") == {"d1980"}
    assert world.found("Patient?birthdate=1990-06") == set()  # 1990 is wider than June 1990
    assert world.found("Patient?birthdate=ge1990") == {"d1990", "d2000"}
    assert world.found("Patient?birthdate=gt1990") == {"d2000"}
    assert world.found("Patient?birthdate=lt1990") == {"d1980"}
    assert world.found("Patient?birthdate=le1990") == {"d1980", "d1990"}
    assert world.found("Patient?birthdate=ne1990") == {"d1980", "d2000"}
    assert world.found("Patient?birthdate=sa1990") == {"d2000"}
    assert world.found("Patient?birthdate=eb1990") == {"d1980"}
    assert world.found("Patient?birthdate=ap1980-05-18") == {"d1980"}
    assert world.found("Patient?birthdate=ge1980&birthdate=lt1995") == {"d1980", "d1990"}


def test_date_periods_and_times(world: World) -> None:
    def encounter(period: dict[str, str]) -> dict[str, Any]:
        return {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"code": "AMB"},
            "period": period,
        }

    world.add("closed", encounter({"start": "2020-01-01T10:00:00Z", "end": "2020-01-01T11:00:00Z"}))
    world.add("open", encounter({"start": "2021-06-01T00:00:00+02:00"}))
    assert world.found("Encounter?date=2020-01-01") == {"closed"}
    assert world.found("Encounter?date=ge2021") == {"open"}
    assert world.found("Encounter?date=gt2030") == {"open"}  # an open end extends forever
    assert world.found("Encounter?date=lt2021-05-31T22:00:00Z") == {"closed"}
    assert world.found("Encounter?date=lt2021-05-31T22:00:01Z") == {"closed", "open"}


def test_last_updated(world: World) -> None:
    world.add("p", patient("A"))
    assert world.found("Patient?_lastUpdated=gt2000-01-01") == {"p"}
    assert world.found("Patient?_lastUpdated=lt2000-01-01") == set()


# --- reference ---------------------------------------------------------------------------------


def test_reference_forms(world: World, live_server: Any) -> None:
    pid = world.add("p", patient("A"))
    other = world.add("q", patient("B"))
    world.add("obs", observation(f"Patient/{pid}", text="x", category=None))
    by_mrn = {"identifier": {"system": "urn:mrn", "value": "77"}}  # a subject by identifier only
    world.add(
        "ident", {**observation(f"Patient/{pid}", text="x", category=None), "subject": by_mrn}
    )
    world.add("ext", observation("http://other.example/fhir/Patient/9", text="x", category=None))
    assert world.found(f"Observation?subject=Patient/{pid}") == {"obs"}
    assert world.found(f"Observation?subject={pid}") == {"obs"}
    assert world.found(f"Observation?patient={pid}") == {"obs"}
    assert world.found(f"Observation?subject:Patient={pid}") == {"obs"}
    assert world.found(f"Observation?subject:Group={pid}") == set()
    assert world.found(f"Observation?subject={live_server.origin}/fhir/Patient/{pid}") == {"obs"}
    assert world.found(f"Observation?subject=Patient/{pid}/_history/1") == {"obs"}
    assert world.found(f"Observation?subject=Patient/{other}") == set()
    assert world.found("Observation?subject=http://other.example/fhir/Patient/9") == {"ext"}
    assert world.found("Observation?subject:identifier=urn:mrn|77") == {"ident"}
    assert world.found("Observation?subject:missing=true") == set()


def test_chain_and_reverse_chain(world: World) -> None:
    pid = world.add("p", patient("Chained", "Carla"))
    world.add("q", patient("Other"))
    world.add(
        "obs",
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"code": "c1"}]},
            "subject": {"reference": f"Patient/{pid}"},
        },
    )
    assert world.found("Observation?subject:Patient.name=chained") == {"obs"}
    assert world.found("Observation?subject.name=carla") == {"obs"}
    assert world.found("Observation?subject.name=other") == set()
    assert world.found("Patient?_has:Observation:subject:code=c1") == {"p"}
    assert world.found("Patient?_has:Observation:subject:code=c2") == set()


def test_id_and_last_updated_modifiers(world: World) -> None:
    p = world.add("p", patient("Rowmod"))
    q = world.add("q", patient("Rowmod"))
    assert world.found(f"Patient?_id:not={p}") == {"q"}
    assert world.found(f"Patient?_id:not={p},{q}") == set()
    assert world.found(f"Patient?_id:not={p}&_id={p},{q}") == {"q"}
    assert world.found("Patient?_id:missing=false") == {"p", "q"}
    assert world.found("Patient?_id:missing=true") == set()
    assert world.found("Patient?_lastUpdated:missing=false") == {"p", "q"}
    assert world.found("Patient?_lastUpdated:missing=true") == set()
    for refused in ("_id:exact", "_id:below", "_id:text", "_id:contains", "_lastUpdated:not"):
        for prefer in ({}, {"prefer": "handling=strict"}):
            outcome = world.search(f"Patient?{refused}={p}", status=400, **prefer)
            assert outcome["issue"][0]["code"] == "not-supported"
            assert outcome["issue"][0]["expression"] == [refused]
    assert world.search("Patient?_id:missing=maybe", status=400)["issue"][0]["code"] == "value"
    assert world.search("Patient?_lastUpdated:missing=x", status=400)["issue"][0]["code"] == "value"
    lenient = world.names(f"Patient?_id:below={p}", prefer="handling=lenient")
    assert set(lenient) == {"p", "q"}


def test_id_and_last_updated_in_chains_and_has(world: World) -> None:
    p = world.add("p", patient("Rowchain"))
    q = world.add("q", patient("Rowchain"))
    op = world.add("op", observation(f"Patient/{p}", text="x", category=None))
    world.add("oq", observation(f"Patient/{q}", text="x", category=None))
    world.add(
        "group",
        {
            "resourceType": "Group",
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": f"Patient/{p}"}}],
        },
    )
    assert world.found(f"Observation?subject:Patient._id={p}") == {"op"}
    assert world.found(f"Observation?subject._id={p}") == {"op"}
    assert world.found(f"Observation?subject._id={p},{q}") == {"op", "oq"}
    assert world.found(f"Observation?subject:Patient._id:not={p}") == {"oq"}
    assert world.found("Observation?subject:Patient._id:missing=false") == {"op", "oq"}
    assert world.found("Observation?subject:Patient._id:missing=true") == set()
    assert world.found(f"Observation?subject:Patient._id={p}&subject.name=rowchain") == {"op"}
    assert world.found(f"Group?member._id={p}") == {"group"}
    assert world.found(f"Group?member._id={q}") == set()
    assert world.found(f"Patient?_has:Observation:subject:_id={op}") == {"p"}
    assert world.found(f"Patient?_has:Group:member:_id={world.ids['group']}") == {"p"}
    assert world.found("Observation?subject:Patient._lastUpdated=gt2000") == {"op", "oq"}
    assert world.found("Observation?subject:Patient._lastUpdated=lt2000") == set()
    assert world.found("Patient?_has:Observation:subject:_lastUpdated=gt2000") == {"p", "q"}
    assert world.found("Patient?_has:Observation:subject:_lastUpdated=lt2000") == set()
    bad = world.search("Observation?subject._lastUpdated=gtnotadate", status=400)
    assert bad["issue"][0]["code"] == "value"
    refused = world.search(f"Observation?subject:Patient._id:below={p}", status=400)
    assert refused["issue"][0]["code"] == "not-supported"


# --- number, quantity, uri ---------------------------------------------------------------------


def test_quantity(world: World) -> None:
    def weight(value: float, code: str = "kg") -> dict[str, Any]:
        quantity = {
            "value": value,
            "unit": code,
            "system": "http://unitsofmeasure.org",
            "code": code,
        }
        return {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "w"},
            "valueQuantity": quantity,
        }

    world.add("w5", weight(5.4))
    world.add("w72", weight(72.5))
    world.add("g", weight(5000, "g"))
    assert world.found("Observation?value-quantity=5") == {"w5"}  # 5 means [4.5, 5.5)
    assert world.found("Observation?value-quantity=5.0") == set()  # [4.95, 5.05)
    assert world.found("Observation?value-quantity=gt70") == {"w72", "g"}
    assert world.found("Observation?value-quantity=gt70|http://unitsofmeasure.org|kg") == {"w72"}
    assert world.found("Observation?value-quantity=le5.4||kg") == {"w5"}
    assert world.found("Observation?value-quantity=ap72") == {"w72"}


def test_composite_over_the_resource(world: World) -> None:
    def observation(code: str, value: float) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueQuantity": {
                "value": value,
                "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]",
            },
        }

    world.add("sys", observation("8480-6", 150))
    world.add("dia", observation("8462-4", 95))
    assert world.found("Observation?code-value-quantity=http://loinc.org|8480-6$gt140") == {"sys"}
    assert world.found("Observation?code-value-quantity=8462-4$gt140") == set()
    assert world.found("Observation?code-value-quantity=8480-6$gt140,8462-4$gt90") == {"sys", "dia"}
    assert (
        world.search("Observation?code-value-quantity=8480-6", status=400)["issue"][0]["code"]
        == "value"
    )
    outcome = world.search("Observation?component-code-value-quantity=8480-6$gt140", status=400)
    assert outcome["issue"][0]["code"] == "not-supported"


def test_number_and_uri(world: World) -> None:
    world.add(
        "r",
        {
            "resourceType": "RiskAssessment",
            "status": "final",
            "subject": {"reference": "Patient/x"},
            "prediction": [{"probabilityDecimal": 0.25}],
        },
    )
    assert world.found("RiskAssessment?probability=0.25") == {"r"}
    assert world.found("RiskAssessment?probability=gt0.2") == {"r"}
    assert world.found("RiskAssessment?probability=lt0.2") == set()
    world.add(
        "vs",
        {
            "resourceType": "ValueSet",
            "status": "active",
            "url": "http://example.org/fhir/ValueSet/a",
        },
    )
    assert world.found("ValueSet?url=http://example.org/fhir/ValueSet/a") == {"vs"}
    assert world.found("ValueSet?url:below=http://example.org/fhir") == {"vs"}
    assert world.found("ValueSet?url:above=http://example.org/fhir/ValueSet/a/b") == {"vs"}
    assert world.found("ValueSet?url=http://example.org/fhir") == set()


# --- result parameters -------------------------------------------------------------------------


def test_sort_and_paging(world: World) -> None:
    dates = ["1970", "1985-03-04", "1960-01-01", "2001-09", "1985-03-04"]
    for i, d in enumerate(dates):
        world.add(f"p{i}", patient(f"Sort{i}", birthDate=d))
    ascending = world.names("Patient?_sort=birthdate")
    assert ascending[:2] == ["p2", "p0"] and ascending[-1] == "p3"
    assert set(ascending[2:4]) == {"p1", "p4"}
    descending = world.names("Patient?_sort=-birthdate")
    assert descending[0] == "p3" and descending[-1] == "p2"
    # pages of 2 give every match exactly once, in the same order
    pages: list[str] = []
    bundle = world.search("Patient?_sort=-birthdate&_count=2")
    while True:
        assert len(bundle.get("entry", [])) <= 2
        pages += [e["resource"]["id"] for e in bundle.get("entry", [])]
        next_links = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not next_links:
            break
        bundle = world.client.get(next_links[0]).json()
    assert pages == [world.ids[n] for n in descending]


def test_paging_is_stable_while_others_insert(world: World) -> None:
    for i in range(5):
        world.add(f"p{i}", patient(f"Stable{i}"))
    first = world.search("Patient?_count=2")
    seen = [e["resource"]["id"] for e in first["entry"]]
    for i in range(5, 10):
        world.add(f"p{i}", patient(f"Stable{i}"))
    link = next(link["url"] for link in first["link"] if link["relation"] == "next")
    while link:
        page = world.client.get(link).json()
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        link = next((x["url"] for x in page["link"] if x["relation"] == "next"), "")
    assert len(seen) == len(set(seen))
    assert {world.ids[f"p{i}"] for i in range(5)} <= set(seen)


def test_links_entries_and_totals(world: World) -> None:
    for i in range(3):
        world.add(f"p{i}", patient("Total"))
    bundle = world.search("Patient?name=total&_count=2&_total=accurate")
    assert bundle["total"] == 3
    self_link = next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    assert parse_qs(urlsplit(self_link).query)["name"] == ["total"]
    for entry in bundle["entry"]:
        assert entry["fullUrl"].endswith(f"/Patient/{entry['resource']['id']}")
        assert entry["search"] == {"mode": "match"}
    assert "total" not in world.search("Patient?name=total")
    estimate = world.search("Patient?name=total&_total=estimate")
    assert isinstance(estimate["total"], int)
    counted = world.search("Patient?name=total&_summary=count")
    assert counted["total"] == 3 and "entry" not in counted


def test_elements_and_summary(world: World) -> None:
    world.add(
        "p",
        patient(
            "Elements",
            gender="male",
            deceasedBoolean=False,
            contact=[{"name": {"family": "Kin"}}],
            text={
                "status": "generated",
                "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>',
            },
        ),
    )
    resource = world.search("Patient?_elements=gender")["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "gender"}
    assert any(t["code"] == "SUBSETTED" for t in resource["meta"]["tag"])
    data = world.search("Patient?_summary=data")["entry"][0]["resource"]
    assert "text" not in data and data["gender"] == "male"
    text = world.search("Patient?_summary=text")["entry"][0]["resource"]
    assert "text" in text and "gender" not in text
    summary = world.search("Patient?_summary=true")["entry"][0]["resource"]
    # Patient.gender, name, deceased[x] are summary elements; text and contact are not
    assert summary["gender"] == "male" and summary["deceasedBoolean"] is False
    assert "text" not in summary and "contact" not in summary


def test_elements_name_base_elements_choices_and_primitive_extensions(world: World) -> None:
    birth_time = {
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                "valueDateTime": "1990-01-01T10:00:00Z",
            }
        ]
    }
    pid = world.add(
        "p",
        patient("Choice", born="1990-01-01", _birthDate=birth_time, deceasedBoolean=False),
    )
    world.add(
        "o",
        observation(
            f"Patient/{pid}",
            category=None,
            valueQuantity={"value": 5.4, "unit": "mmol/L"},
            effectiveDateTime="2020-05-17",
        ),
    )

    def resource(query: str) -> dict[str, Any]:
        result: dict[str, Any] = world.search(query)["entry"][0]["resource"]
        return result

    kept = resource("Patient?_elements=birthDate,deceased")
    assert set(kept) == {"resourceType", "id", "meta", "birthDate", "_birthDate", "deceasedBoolean"}
    assert kept["_birthDate"] == birth_time
    # the JSON name of a choice is understood too
    assert "deceasedBoolean" in resource("Patient?_elements=deceasedBoolean")
    left = resource("Patient?_elements=-birthDate,-deceased")
    assert not {"birthDate", "_birthDate", "deceasedBoolean"} & set(left) and "name" in left
    observed = resource("Observation?_elements=value,effective")
    assert set(observed) == {"resourceType", "id", "meta", "valueQuantity", "effectiveDateTime"}
    assert any(t["code"] == "SUBSETTED" for t in observed["meta"]["tag"])
    observed = resource("Observation?_elements=-value,-effective")
    assert not {"valueQuantity", "effectiveDateTime"} & set(observed) and "code" in observed
    assert set(resource("Observation?_elements=value[x]")) >= {"valueQuantity"}


def test_elements_do_not_apply_to_included_resources(world: World) -> None:
    pid = world.add("p", patient("Included", gender="female"))
    oid = world.add("o", observation(f"Patient/{pid}", text="x", category=None))
    stored = world.client.get(f"/Patient/{pid}").json()
    entries = world.search("Observation?_elements=status&_include=Observation:subject")["entry"]
    by_mode = {e["search"]["mode"]: e["resource"] for e in entries}
    assert set(by_mode["match"]) == {"resourceType", "id", "meta", "status"}
    # R4 search.html#elements: "the list of elements does not apply to included resources"
    assert by_mode["include"] == stored
    entries = world.search("Patient?_elements=gender&_revinclude=Observation:subject")["entry"]
    by_mode = {e["search"]["mode"]: e["resource"] for e in entries}
    assert set(by_mode["match"]) == {"resourceType", "id", "meta", "gender"}
    assert by_mode["include"] == world.client.get(f"/Observation/{oid}").json()
    # POST _search and compartment search subset the same way
    posted = world.client.post(
        "/Observation/_search",
        content=f"_elements=status&_include=Observation:subject&_tag={world.tag}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ).json()["entry"]
    assert {e["search"]["mode"]: set(e["resource"]) for e in posted} == {
        "match": {"resourceType", "id", "meta", "status"},
        "include": set(stored),
    }
    in_compartment = world.search(f"Patient/{pid}/*?_elements=status")["entry"]
    shapes = {e["resource"]["resourceType"]: set(e["resource"]) for e in in_compartment}
    assert shapes == {
        "Observation": {"resourceType", "id", "meta", "status"},
        "Patient": {"resourceType", "id", "meta"},
    }


def test_estimated_total_is_never_below_the_page(world: World) -> None:
    for i in range(5):
        world.add(f"p{i}", patient("Estimate"))
    # PostgreSQL's statistics know nothing of these rows yet; the page itself proves them
    whole = world.search("Patient?name=estimate&_total=estimate")
    assert whole["total"] == 5 and len(whole["entry"]) == 5
    assert not any(link["relation"] == "next" for link in whole["link"])
    first = world.search("Patient?name=estimate&_total=estimate&_count=2")
    assert first["total"] >= 3
    link = next(x["url"] for x in first["link"] if x["relation"] == "next")
    second = world.client.get(link).json()
    assert second["total"] >= len(second["entry"]) + 1
    link = next(x["url"] for x in second["link"] if x["relation"] == "next")
    last = world.client.get(link).json()
    assert last["total"] >= len(last["entry"]) == 1


def test_include_revinclude_and_iterate(world: World) -> None:
    org = world.add("org", {"resourceType": "Organization", "name": "Clinic"})
    pid = world.add("p", patient("Inc", managingOrganization={"reference": f"Organization/{org}"}))
    world.add("obs", observation(f"Patient/{pid}", text="x", category=None))

    def entries(query: str) -> set[tuple[str, str]]:
        by_id = {v: k for k, v in world.ids.items()}
        return {
            (by_id[e["resource"]["id"]], e["search"]["mode"])
            for e in world.search(query).get("entry", [])
        }

    assert entries("Observation?_include=Observation:subject") == {
        ("obs", "match"),
        ("p", "include"),
    }
    assert entries("Observation?_include=Observation:subject:Patient") == {
        ("obs", "match"),
        ("p", "include"),
    }
    assert entries("Observation?_include=Observation:subject:Group") == {("obs", "match")}
    assert entries("Observation?_include=*") == {("obs", "match"), ("p", "include")}
    assert entries("Patient?_revinclude=Observation:subject") == {
        ("p", "match"),
        ("obs", "include"),
    }
    assert entries(
        "Observation?_include=Observation:subject&_include:iterate=Patient:organization"
    ) == {("obs", "match"), ("p", "include"), ("org", "include")}


def test_post_search_with_a_form(world: World) -> None:
    world.add("p", patient("Posted"))
    response = world.client.post(
        "/Patient/_search",
        content=f"name=posted&_tag={world.tag}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert [e["resource"]["id"] for e in response.json()["entry"]] == [world.ids["p"]]
    wrong = world.client.post("/Patient/_search", json={"name": "x"})
    assert wrong.status_code == 415


def test_compartment_search(world: World) -> None:
    pid = world.add("p", patient("Comp"))
    world.add("obs", observation(f"Patient/{pid}", text="x", category=None))
    world.add(
        "enc",
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": f"Patient/{pid}"},
        },
    )
    world.add("stranger", {"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
    assert world.found(f"Patient/{pid}/Observation") == {"obs"}
    assert world.found(f"Patient/{pid}/*") == {"p", "obs", "enc"}
    assert world.found(f"Patient/{pid}/Encounter?status=finished") == {"enc"}
    assert (
        world.search(f"Patient/{pid}/Organization", status=400)["issue"][0]["code"]
        == "not-supported"
    )


# --- strictness and hostile input --------------------------------------------------------------


def test_unknown_parameters_are_refused_or_ignored(world: World) -> None:
    world.add("p", patient("Strict"))
    outcome = world.search("Patient?nickname=x", status=400)
    assert "`nickname`" in outcome["issue"][0]["diagnostics"]
    assert (
        world.search("Patient?name:phonetic=x", status=400)["issue"][0]["code"] == "not-supported"
    )
    assert world.search("Patient?birthdate=xx2000", status=400)["issue"][0]["code"] == "value"
    lenient = world.search("Patient?nickname=x&name=strict", prefer="handling=lenient")
    assert [e["resource"]["id"] for e in lenient["entry"]] == [world.ids["p"]]
    self_link = next(link["url"] for link in lenient["link"] if link["relation"] == "self")
    assert "nickname" not in self_link


@pytest.mark.parametrize(
    "query",
    [
        "Patient?name=%27%3B%20DROP%20TABLE%20resources%3B--",
        "Patient?name=%25",
        "Patient?name=_",
        "Patient?name=%5C",
        "Patient?name:contains=%25_%5C",
        "Patient?identifier=a%7Cb%7Cc",
        "Observation?value-quantity=1" + "0" * 400,
        "Observation?value-quantity=1e999999",
        "Patient?birthdate=2020-13-45",
        "Patient?birthdate=99999",
        "Patient?_count=99999999999",
        "Patient?_sort=nickname",
        "Patient?_page=notacursor",
        "Patient?_id=" + ",".join(str(i) for i in range(10_000)),
        "Patient?name=" + ",".join(f"n{i}" for i in range(1_001)),
    ],
)
def test_hostile_input_gets_an_answer_not_a_fault(
    world: World, query: str, db: psycopg.Connection[Any]
) -> None:
    before = db.execute(
        "SELECT count(*) FROM resources WHERE resource_type <> 'AuditEvent'"
    ).fetchone()
    response = world.client.get(f"/{query}")
    assert response.status_code in {200, 400}, response.text
    assert response.json()["resourceType"] in {"Bundle", "OperationOutcome"}
    assert (
        db.execute("SELECT count(*) FROM resources WHERE resource_type <> 'AuditEvent'").fetchone()
        == before
    )


def test_deleted_and_updated_resources_leave_the_index(world: World) -> None:
    pid = world.add("p", patient("Before"))
    assert world.found("Patient?name=before") == {"p"}
    update = world.client.put(
        f"/Patient/{pid}",
        json={
            **patient("After"),
            "id": pid,
            "meta": {"tag": [{"system": "urn:test:search", "code": world.code}]},
        },
    )
    assert update.status_code == 200
    assert world.found("Patient?name=before") == set()
    assert world.found("Patient?name=after") == {"p"}
    assert world.client.delete(f"/Patient/{pid}").status_code in {200, 204}
    assert world.found("Patient?name=after") == set()
