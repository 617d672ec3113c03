"""A small family and care world for the access tests, created through the API by a System
client, and the callers (real signed tokens) who act in it.

- `minor`: a child of 10, `parent` (RelatedPerson, mother) acts for her.
- `adult`: 30 years old; `relative` (RelatedPerson, spouse) is linked to her; `doctor` is in her
  CareTeam; she is also a caller herself (fhirUser Patient/adult).
- `other`: nobody in this world may see her data; `stranger` is a practitioner with no patients.
- `account`: a Person whose link to `other` is unverified (level2).
Each patient has a laboratory Observation; the minor's names the parent as performer (so the
parent may write it: it is in both compartments); the adult also has a vital-signs Observation.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import httpx
import psycopg

from tests.conftest import auth

LAB = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "laboratory",
        }
    ]
}
VITALS = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs",
        }
    ]
}


def years_ago(years: int, days: int = 0) -> str:
    today = date.today()
    try:
        born = today.replace(year=today.year - years)
    except ValueError:  # 29 February
        born = today.replace(year=today.year - years, day=28)
    return (born - timedelta(days=days)).isoformat()


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
        headers = auth(fhir_user, scope, **kw) if fhir_user else auth(scope=scope, **kw)
        return httpx.Client(base_url=f"{self.origin}/fhir", timeout=30, headers=headers)

    def create(self, body: dict[str, Any]) -> str:
        response = self.system.post(f"/{body['resourceType']}", json=body)
        assert response.status_code == 201, response.text
        return f"{body['resourceType']}/{response.json()['id']}"

    def observation(self, patient: str, code: str, category: dict[str, Any], **extra: Any) -> str:
        return self.create(
            {
                "resourceType": "Observation",
                "status": "final",
                "category": [category],
                "code": {"coding": [{"system": "urn:test", "code": code}]},
                "subject": {"reference": patient},
                "identifier": [{"system": "urn:test:obs", "value": f"{self.tag}-{code}"}],
                **extra,
            }
        )


def build_world(origin: str, system: httpx.Client) -> World:
    world = World(origin, system, uuid.uuid4().hex[:10])
    ids = world.ids
    name = [{"family": f"Family{world.tag}"}]
    ids["minor"] = world.create(
        {"resourceType": "Patient", "name": name, "birthDate": years_ago(10)}
    )
    ids["adult"] = world.create(
        {"resourceType": "Patient", "name": name, "birthDate": years_ago(30)}
    )
    ids["other"] = world.create(
        {
            "resourceType": "Patient",
            "name": [{"family": f"Other{world.tag}"}],
            "birthDate": years_ago(40),
        }
    )
    ids["parent"] = world.create(
        {
            "resourceType": "RelatedPerson",
            "active": True,
            "patient": {"reference": ids["minor"]},
            "relationship": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                            "code": "MTH",
                        }
                    ]
                }
            ],
        }
    )
    ids["relative"] = world.create(
        {
            "resourceType": "RelatedPerson",
            "active": True,
            "patient": {"reference": ids["adult"]},
            "relationship": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                            "code": "SPS",
                        }
                    ]
                }
            ],
        }
    )
    ids["doctor"] = world.create({"resourceType": "Practitioner", "name": name})
    ids["stranger"] = world.create({"resourceType": "Practitioner", "name": name})
    ids["careteam"] = world.create(
        {
            "resourceType": "CareTeam",
            "status": "active",
            "subject": {"reference": ids["adult"]},
            "participant": [{"member": {"reference": ids["doctor"]}}],
        }
    )
    ids["account"] = world.create(
        {
            "resourceType": "Person",
            "active": True,
            "link": [{"target": {"reference": ids["other"]}, "assurance": "level2"}],
        }
    )
    ids["obs_minor"] = world.observation(
        ids["minor"], "minor-lab", LAB, performer=[{"reference": ids["parent"]}]
    )
    ids["obs_minor_plain"] = world.observation(ids["minor"], "minor-plain", LAB)
    ids["obs_adult"] = world.observation(ids["adult"], "adult-lab", LAB)
    ids["vitals_adult"] = world.observation(ids["adult"], "adult-vitals", VITALS)
    ids["obs_other"] = world.observation(ids["other"], "other-lab", LAB)
    return world


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
