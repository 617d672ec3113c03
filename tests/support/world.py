"""The people, relationships, consents and callers the access tests act with: `make_world(...)`
creates them through the API as a System client (the `make_world` fixture of tests/conftest.py
binds it to the session's live server).

The family and care world (`make_world()`):

- `minor`: a child of 10, `parent` (RelatedPerson, mother) acts for her.
- `adult`: 30 years old; `relative` (RelatedPerson, spouse) is linked to her; `doctor` is in her
  CareTeam (`careteam`); she is also a caller herself (fhirUser Patient/adult).
- `other`: nobody in this world may see her data; `stranger` is a practitioner with no patients.
- `account`: a Person whose link to `other` is unverified (level2).
Each patient has a laboratory Observation (`obs_minor`, `obs_adult`, `obs_other`); the minor's
names the parent as performer (so the parent may write it: it is in both compartments), and she
has a second one without (`obs_minor_plain`); the adult also has a vital-signs Observation
(`vitals_adult`).

What a test adds on top, by keyword:

- `father=True`: `father`, the minor's father (RelatedPerson), not a stranger to the mother;
- `relative_of_other=True`: `theirs`, a spouse of the unrelated patient;
- `consent_to_relative=("LAB_RESULTS", ...)`: `consent`, the adult's Consent that lets her
  spouse see (and so write) those kinds of data;
- `second_mother=True`: `mum`, a patient herself (35), who is by a verified Person link
  (`person`) also the minor's other mother (`mum_parent`).

`make_world(people=False)` is an empty world of the same kind, for tests that create their own
people (`patient(...)`).

The family of issue 13 (`make_family(world)`, on any world, usually an empty one): John (an
adult Patient, `john`) whose Person (`john_person`, level4 links) links himself and his
RelatedPersons towards Mary (12, `rp_mary`, FTH), Tom (8, `rp_tom`, FTH) and his wife Jane (an
adult, `rp_jane`, SPS). Names are "<Given> Doe<tag>"; each child and Jane has a laboratory
Observation (`obs_mary`, `obs_tom`, `obs_jane`) and Jane a vital-signs one (`vitals_jane`).
`jane_consent(world, ...)` is Jane's Consent that lets John's RelatedPerson see those scopes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

from tests.support import resources
from tests.support.resources import (
    GRANTEE,
    LAB,
    VITALS,
    care_team,
    consent,
    permit,
    related_person,
    years_ago,
)
from tests.support.tokens import auth

NATIONAL = "http://nationalid.gov.ke"


@dataclass
class World:
    origin: str
    system: httpx.Client
    tag: str
    ids: dict[str, str] = field(default_factory=dict)

    def ref(self, name: str) -> str:
        return self.ids[name]

    def client(
        self, fhir_user: str | None = None, scope: str = "user/*.cruds", **kw: Any
    ) -> httpx.Client:
        """An HTTP client of the FHIR API acting as `fhir_user` with `scope`."""
        headers = auth(fhir_user, scope, **kw) if fhir_user else auth(scope=scope, **kw)
        return httpx.Client(base_url=f"{self.origin}/fhir", timeout=30, headers=headers)

    def create(self, body: dict[str, Any]) -> str:
        """Create `body` as the System client: its reference."""
        return f"{body['resourceType']}/{self.posted(body)['id']}"

    def observation(self, patient: str, code: str, category: dict[str, Any], **extra: Any) -> str:
        """Create an Observation of `patient` with an identifier unique to this world."""
        identifier = [{"system": "urn:test:obs", "value": f"{self.tag}-{code}"}]
        return self.create(
            resources.observation(
                patient, code=code, category=category, identifier=identifier, **extra
            )
        )

    def posted(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create `body` as the System client: the resource as stored."""
        response = self.system.post(f"/{body['resourceType']}", json=body)
        assert response.status_code == 201, response.text
        stored: dict[str, Any] = response.json()
        return stored

    def nid(self, name: str) -> str:
        """A national id unique to this world."""
        return f"{name}-{self.tag}"

    def patient(self, given: str, born: str, national: str | None = None) -> str:
        """Create a Patient of the Doe family (with a national id, if given): her reference."""
        extra = {"identifier": [{"system": NATIONAL, "value": national}]} if national else {}
        return self.create(resources.patient("Doe", given, born=born, **extra))


def make_world(
    origin: str,
    system: httpx.Client,
    *,
    people: bool = True,
    father: bool = False,
    relative_of_other: bool = False,
    consent_to_relative: tuple[str, ...] = (),
    second_mother: bool = False,
    tag_length: int = 10,
) -> World:
    """A world on the server at `origin`, created by `system` (see the module's docstring)."""
    world = World(origin, system, uuid.uuid4().hex[:tag_length])
    if not people:
        return world
    ids = world.ids
    family = f"Family{world.tag}"
    ids["minor"] = world.create(resources.patient(family, born=years_ago(10)))
    ids["adult"] = world.create(resources.patient(family, born=years_ago(30)))
    ids["other"] = world.create(resources.patient(f"Other{world.tag}", born=years_ago(40)))
    ids["parent"] = world.create(related_person(ids["minor"], "MTH"))
    ids["relative"] = world.create(related_person(ids["adult"], "SPS"))
    ids["doctor"] = world.create({"resourceType": "Practitioner", "name": [{"family": family}]})
    ids["stranger"] = world.create({"resourceType": "Practitioner", "name": [{"family": family}]})
    ids["careteam"] = world.create(care_team(ids["adult"], ids["doctor"]))
    ids["account"] = world.create(person((ids["other"], "level2")))
    ids["obs_minor"] = world.observation(
        ids["minor"], "minor-lab", LAB, performer=[{"reference": ids["parent"]}]
    )
    ids["obs_minor_plain"] = world.observation(ids["minor"], "minor-plain", LAB)
    ids["obs_adult"] = world.observation(ids["adult"], "adult-lab", LAB)
    ids["vitals_adult"] = world.observation(ids["adult"], "adult-vitals", VITALS)
    ids["obs_other"] = world.observation(ids["other"], "other-lab", LAB)
    if father:
        ids["father"] = world.create(related_person(ids["minor"], "FTH"))
    if relative_of_other:
        ids["theirs"] = world.create(related_person(ids["other"], "SPS"))
    if consent_to_relative:
        ids["consent"] = world.create(relative_consent(world, *consent_to_relative))
    if second_mother:
        ids["mum"] = world.create(resources.patient("Mum", born=years_ago(35)))
        ids["mum_parent"] = world.create(related_person(ids["minor"], "MTH"))
        ids["person"] = world.create(person((ids["mum"], "level4"), (ids["mum_parent"], "level4")))
    return world


FAMILY_NAMES = ("john", "john_person", "mary", "tom", "jane", "rp_mary", "rp_tom", "rp_jane")


def make_family(world: World) -> dict[str, str]:
    """John's family of issue 13 on `world` (see the module's docstring): the references by
    name, also recorded in `world.ids`."""
    ids = world.ids
    family = f"Doe{world.tag}"
    ids["john"] = world.create(resources.patient(family, "John", born=years_ago(40), gender="male"))
    ids["mary"] = world.create(
        resources.patient(family, "Mary", born=years_ago(12), gender="female")
    )
    ids["tom"] = world.create(resources.patient(family, "Tom", born=years_ago(8), gender="male"))
    ids["jane"] = world.create(
        resources.patient(family, "Jane", born=years_ago(38), gender="female")
    )
    ids["rp_mary"] = world.create(related_person(ids["mary"], "FTH"))
    ids["rp_tom"] = world.create(related_person(ids["tom"], "FTH"))
    ids["rp_jane"] = world.create(related_person(ids["jane"], "SPS"))
    ids["john_person"] = world.create(
        person(
            (ids["john"], "level4"),
            (ids["rp_mary"], "level4"),
            (ids["rp_tom"], "level4"),
            (ids["rp_jane"], "level4"),
        )
    )
    ids["obs_mary"] = world.observation(ids["mary"], "mary-lab", LAB)
    ids["obs_tom"] = world.observation(ids["tom"], "tom-lab", LAB)
    ids["obs_jane"] = world.observation(ids["jane"], "jane-lab", LAB)
    ids["vitals_jane"] = world.observation(ids["jane"], "jane-vitals", VITALS)
    return {name: ids[name] for name in FAMILY_NAMES}


def jane_consent(world: World, *scopes: str, **provision: Any) -> dict[str, Any]:
    """Jane's Consent that lets John's RelatedPerson towards her see those kinds of her data
    (`provision`: more provision elements, e.g. a `period`)."""
    return consent(
        world.ref("jane"),
        permit(world.ref("rp_jane"), *scopes, role=GRANTEE, **provision),
        scope={"coding": [{"code": "patient-privacy"}]},
        category={"coding": [{"code": "INFA"}]},
    )


def add_child(caller: httpx.Client, primary: str, given: str, born: str) -> str:
    """Add a new child of the Doe family as `primary`'s dependent, as `caller`: her reference."""
    return add_child_and_link(caller, primary, given, born)[0]


def add_child_and_link(
    caller: httpx.Client, primary: str, given: str, born: str
) -> tuple[str, str]:
    """`add_child`: her reference, and that of the RelatedPerson that stands for `primary`
    towards her."""
    added = add_dependent(
        caller, primary, relationship="CHILD", dependent=resources.patient("Doe", given, born=born)
    )
    assert added.status_code == 201, added.text
    kid: str = resources.values(added.json())["dependent"]["reference"]
    mine = next(p for p in added.json()["parameter"] if p["name"] == "link")
    own_link: str = next(
        p["valueReference"]["reference"] for p in mine["part"] if p["name"] == "relatedPerson"
    )
    return kid, own_link


def add_dependent(caller: httpx.Client, primary: str, **values: Any) -> httpx.Response:
    """`primary`'s `$add-dependent` with these input parameters, as `caller`."""
    return caller.post(f"/{primary}/$add-dependent", json=resources.parameters(**values))


def person(*links: tuple[str, str]) -> dict[str, Any]:
    """An active Person linked to each (reference, assurance level)."""
    return {
        "resourceType": "Person",
        "active": True,
        "link": [{"target": {"reference": r}, "assurance": level} for r, level in links],
    }


def relative_consent(world: World, *scopes: str) -> dict[str, Any]:
    """The adult's Consent that lets her relative (spouse) see those kinds of her data."""
    return consent(
        world.ref("adult"),
        permit(world.ref("relative"), *scopes, role=GRANTEE),
        scope={"coding": [{"code": "patient-privacy"}]},
        category={"coding": [{"code": "INFA"}]},
    )


def lab_results_consent(world: World) -> dict[str, Any]:
    """The adult's Consent that lets her relative see her lab results."""
    return relative_consent(world, "LAB_RESULTS")


def snapshot(db: psycopg.Connection[Any]) -> tuple[Any, ...]:
    """Everything but the audit trail: a denied request must leave it exactly as it was."""
    current = db.execute(
        "SELECT count(*), md5(string_agg(concat_ws(' ', resource_type, id, version_id, deleted,"
        " content::text), ',' ORDER BY resource_type, id)) FROM resources"
        " WHERE resource_type <> 'AuditEvent'"
    ).fetchone()
    history = db.execute(
        "SELECT count(*) FROM resource_history WHERE resource_type <> 'AuditEvent'"
    ).fetchone()
    return (current, history)


def latest_denial(db: psycopg.Connection[Any], who: str) -> Any:
    """The row (content,) of the latest AuditEvent of a denial to `who`, or None."""
    return db.execute(
        "SELECT content FROM audit_events WHERE true"
        " AND content->>'outcome' = '4' AND content->'agent'->0->'who'->>'reference' = %s"
        " ORDER BY last_updated DESC LIMIT 1",
        (who,),
    ).fetchone()
