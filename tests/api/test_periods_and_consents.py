"""Issue 11, findings 2 and 12, through HTTP with real tokens.

Periods are instants with a precision: a Consent, RelatedPerson, CareTeam (participant and team),
Coverage, emergency contact or delegation that ended an hour ago has ended, and a cached decision
does not outlive the instant its period ends. Consents in standard R4 terms (`class`, `action`,
`data`, nested provisions, actor roles) grant exactly what they say, in the SQL of reads and
searches, and what the server does not understand grants nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from compartments.periods import format_instant
from tests.support import resources
from tests.support.resources import IRCP, TERMINOLOGY, patient, permit, years_ago
from tests.support.tokens import auth
from tests.support.world import World, add_child, add_child_and_link, snapshot
from tests.support.world import add_dependent as add


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()


def at(delta: timedelta) -> str:
    return format_instant(datetime.now(UTC) + delta)


HOUR = timedelta(hours=1)


def consent(world: World, provision: dict[str, Any], **extra: Any) -> str:
    """A Consent of the adult, written by the system client."""
    return world.create(resources.consent(world.ref("adult"), provision, **extra))


def to_relative(world: World, **provision: Any) -> dict[str, Any]:
    """A permit to the adult's relative (an information recipient) of the adult's Observations."""
    observations = [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]
    return permit(world.ref("relative"), **{"class": observations, **provision})


def instance(reference: str) -> dict[str, Any]:
    return {"meaning": "instance", "reference": {"reference": reference}}


def reason(response: httpx.Response) -> str:
    assert response.status_code == 403, response.text
    code: str = response.json()["issue"][0]["details"]["coding"][0]["code"]
    return code


def seen(client: httpx.Client, patient: str) -> set[str]:
    bundle = client.get("/Observation", params={"patient": patient})
    assert bundle.status_code == 200, bundle.text
    return {f"Observation/{e['resource']['id']}" for e in bundle.json().get("entry", [])}


def counted(client: httpx.Client, patient: str) -> int:
    bundle = client.get("/Observation", params={"patient": patient, "_summary": "count"})
    assert bundle.status_code == 200, bundle.text
    total: int = bundle.json()["total"]
    return total


# --- periods -----------------------------------------------------------------------------------


def test_a_consent_that_ended_an_hour_ago_grants_nothing(world: World) -> None:
    lab = world.ref("obs_adult")
    consent(world, to_relative(world, period={"end": at(-HOUR)}))
    with world.client(world.ref("relative")) as relative:
        # the day is not over, but the Consent is
        assert reason(relative.get(f"/{lab}")) == "consent_required"
        consent(world, to_relative(world, period={"start": at(HOUR)}))
        assert reason(relative.get(f"/{lab}")) == "consent_required"
        consent(world, to_relative(world, period={"start": at(-HOUR), "end": at(HOUR)}))
        assert relative.get(f"/{lab}").status_code == 200


def test_a_cached_decision_ends_at_the_instant_the_consent_ends(world: World) -> None:
    lab = world.ref("obs_adult")
    ends = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    consent(world, to_relative(world, period={"end": format_instant(ends)}))
    with world.client(world.ref("relative")) as relative:
        assert relative.get(f"/{lab}").status_code == 200  # the facts are cached now
        assert lab in seen(relative, world.ref("adult"))
        # nothing is written meanwhile: only the end instant can end the cached facts
        time.sleep(max(0.0, (ends - datetime.now(UTC)).total_seconds()) + 1.2)
        assert reason(relative.get(f"/{lab}")) == "consent_required"
        search = relative.get("/Observation", params={"patient": world.ref("adult")})
        assert reason(search) == "consent_required"


def test_a_related_person_whose_period_ended_an_hour_ago_is_inactive(
    world: World, db: psycopg.Connection[Any]
) -> None:
    parent = world.ref("parent")
    with world.client(parent) as client:
        assert client.get(f"/{world.ref('obs_minor')}").status_code == 200
        stored = world.system.get(f"/{parent}").json()
        stored["period"] = {"start": "2020-01-01", "end": at(-HOUR)}
        assert world.system.put(f"/{parent}", json=stored).status_code == 200
        assert reason(client.get(f"/{world.ref('obs_minor')}")) == "link_inactive"
        # and a write is refused without a trace
        before = snapshot(db)
        body = world.system.get(f"/{world.ref('obs_minor')}").json()
        body["status"] = "amended"
        assert reason(client.put(f"/{world.ref('obs_minor')}", json=body)) == "link_inactive"
        assert snapshot(db) == before
        stored["period"] = {"start": "2020-01-01", "end": at(HOUR)}
        assert world.system.put(f"/{parent}", json=stored).status_code == 200
        assert client.get(f"/{world.ref('obs_minor')}").status_code == 200


def test_care_team_periods_are_instants(world: World) -> None:
    team_ref = world.ref("careteam")
    lab = world.ref("obs_adult")
    with world.client(world.ref("doctor")) as doctor:
        assert doctor.get(f"/{lab}").status_code == 200
        team = world.system.get(f"/{team_ref}").json()
        team["participant"][0]["period"] = {"end": at(-HOUR)}
        assert world.system.put(f"/{team_ref}", json=team).status_code == 200
        assert reason(doctor.get(f"/{lab}")) == "invalid_compartment"
        # the team's own period counts too
        team["participant"][0]["period"] = {"end": at(HOUR)}
        team["period"] = {"start": "2020", "end": at(-HOUR)}
        assert world.system.put(f"/{team_ref}", json=team).status_code == 200
        assert reason(doctor.get(f"/{lab}")) == "invalid_compartment"
        team["period"] = {"start": "2020", "end": at(HOUR)}
        assert world.system.put(f"/{team_ref}", json=team).status_code == 200
        assert doctor.get(f"/{lab}").status_code == 200


def test_a_team_that_starts_later_today_gives_nothing_until_then(world: World) -> None:
    team = world.system.get(f"/{world.ref('careteam')}").json()
    team["period"] = {"start": at(HOUR)}
    assert world.system.put(f"/{world.ref('careteam')}", json=team).status_code == 200
    with world.client(world.ref("doctor")) as doctor:
        assert reason(doctor.get(f"/{world.ref('obs_adult')}")) == "invalid_compartment"


def test_coverage_that_ended_an_hour_ago_is_not_active(fam: World) -> None:
    primary = fam.patient("Pat", years_ago(40))
    with fam.client(primary) as p:
        kid = add_child(p, primary, "Kit", years_ago(5))
        ended = fam.system.post(
            "/Coverage",
            json=resources.coverage(kid, "OLD", period={"start": "2020-01-01", "end": at(-HOUR)}),
        )
        assert ended.status_code == 201, ended.text
        family = p.get(f"/{primary}/$family").json()["parameter"]
        parts = [part["name"] for member in family for part in member["part"]]
        assert "insuranceCoverage" not in parts
        done = p.post(f"/{primary}/$remove-dependent", json=resources.parameters(dependent=kid))
        assert done.status_code == 200, done.text  # no 409: nothing active
        assert fam.system.get(f"/Coverage/{ended.json()['id']}").json()["status"] == "active"
        # the link ends at the instant of removal, not at midnight
        link = resources.values(done.json())["ended"]["reference"]
        end = fam.system.get(f"/{link}").json()["period"]["end"]
        assert "T" in end and end.endswith("Z")


def test_a_family_link_that_ends_later_today_is_still_family(fam: World) -> None:
    primary = fam.patient("Lee", years_ago(40))
    with fam.client(primary) as p:
        ash = {"relationship": "CHILD", "nationalId": fam.nid("ash")}
        added = add(p, primary, **ash, dependent=patient("Doe", "Ash", born=years_ago(9)))
        assert added.status_code == 201, added.text
        kid = resources.values(added.json())["dependent"]["reference"]
        link = resources.values(added.json())["link"]
        own = next(x["valueReference"]["reference"] for x in link if x["name"] == "relatedPerson")
        stored = fam.system.get(f"/{own}").json()
        stored["period"] = {**stored["period"], "end": at(HOUR)}
        assert fam.system.put(f"/{own}", json=stored).status_code == 200
        members = p.get(f"/{primary}/$family").json()["parameter"]
        listed = {
            part["valueReference"]["reference"]: member
            for member in members
            for part in member["part"]
            if part["name"] == "patient"
        }
        assert kid in listed
        view = next(x for x in listed[kid]["part"] if x["name"] == "canViewClinicalData")
        assert view["valueBoolean"] is True
        # and adding the same child again is refused while the link lasts
        again = add(p, primary, **ash)
        assert again.status_code == 422 and "already-a-dependent" in again.text, again.text
        stored["period"]["end"] = at(-HOUR)
        assert fam.system.put(f"/{own}", json=stored).status_code == 200
        assert p.get(f"/{primary}/$family").json()["parameter"] == []


def test_emergency_contacts_use_instants(fam: World) -> None:
    patient = fam.patient("Eve", years_ago(70))

    def contact(name: str, **extra: Any) -> str:
        return fam.create(
            resources.related_person(
                patient,
                "C",
                system=resources.V2_0131,
                active=None,
                name=[{"family": name}],
                **extra,
            )
        )

    staying = contact(
        "Staying",
        period={"end": at(HOUR)},
        telecom=[
            {"system": "phone", "value": "+254700000010", "rank": 1, "period": {"end": at(-HOUR)}},
            {"system": "phone", "value": "+254700000011", "rank": 2, "period": {"end": at(HOUR)}},
        ],
    )
    contact("Gone", period={"end": at(-HOUR)})
    with fam.client(patient) as p:
        listed = p.get(f"/{patient}/$emergency-contacts")
        assert listed.status_code == 200, listed.text
        contacts = [{part["name"]: part for part in c["part"]} for c in listed.json()["parameter"]]
        assert [c["relatedPerson"]["valueReference"]["reference"] for c in contacts] == [staying]
        assert contacts[0]["telecom"]["valueContactPoint"]["value"] == "+254700000011"


def relationships(origin: str, who: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{origin}/api/v1/relationships", timeout=30, headers=auth(who, "user/*.cruds")
    )


def test_a_delegation_expires_at_its_instant(world: World, db: psycopg.Connection[Any]) -> None:
    adult, relative = world.ref("adult"), world.ref("relative")
    body = {
        "patient_id": adult.split("/")[1],
        "delegate_id": relative.split("/")[1],
        "delegation_scope": ["lab_results"],
    }
    nairobi = (datetime.now(UTC) + HOUR).replace(microsecond=0) + timedelta(hours=3)
    given = nairobi.strftime("%Y-%m-%dT%H:%M:%S+03:00")
    with relationships(world.origin, adult) as api:
        before = snapshot(db)
        for bad in (at(-HOUR), "2026-12-31T10:00:00", "2026-12", "soon"):
            refused = api.post("/delegate", json={**body, "expires_at": bad})
            assert refused.status_code == 400, (bad, refused.text)
            assert "expires_at" in refused.text
        assert snapshot(db) == before
        made = api.post("/delegate", json={**body, "expires_at": given})
        assert made.status_code == 201, made.text
    # the last second it covers, in UTC
    assert made.json()["expires_at"] == format_instant(nairobi - timedelta(hours=3))
    stored = world.system.get(f"/Consent/{made.json()['delegation_id']}").json()
    assert stored["provision"]["period"]["end"] == given
    with world.client(relative) as client:
        assert client.get(f"/{world.ref('obs_adult')}").status_code == 200


# --- Consent in standard terms --------------------------------------------------------------------


def test_a_standard_consent_grants_exactly_what_it_says(
    world: World, db: psycopg.Connection[Any]
) -> None:
    adult = world.ref("adult")
    consent(
        world,
        to_relative(
            world,
            action=[{"coding": [{"system": f"{TERMINOLOGY}/consentaction", "code": "access"}]}],
        ),
        policyRule={"coding": [{"system": f"{TERMINOLOGY}/v3-ActCode", "code": "OPTIN"}]},
    )
    encounter = world.create(
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": f"{TERMINOLOGY}/v3-ActCode", "code": "AMB"},
            "subject": {"reference": adult},
        }
    )
    with world.client(world.ref("relative")) as relative:
        assert relative.get(f"/{world.ref('obs_adult')}").status_code == 200
        assert seen(relative, adult) == {world.ref("obs_adult"), world.ref("vitals_adult")}
        assert reason(relative.get(f"/{encounter}")) == "consent_required"
        # `access` reads; it does not write
        before = snapshot(db)
        created = relative.post(
            "/Observation",
            json=resources.observation(adult, world.ref("relative"), text="x", category=None),
        )
        assert reason(created) == "consent_required"
        assert snapshot(db) == before


def test_a_nested_deny_hides_one_resource_in_the_sql(world: World) -> None:
    adult, hidden = world.ref("adult"), world.ref("obs_adult")
    consent(
        world,
        to_relative(world, provision=[{"type": "deny", "data": [instance(hidden)]}]),
    )
    with world.client(world.ref("relative")) as relative:
        assert seen(relative, adult) == {world.ref("vitals_adult")}
        assert counted(relative, adult) == 1
        assert reason(relative.get(f"/{hidden}")) == "invalid_compartment"
        assert relative.get(f"/{world.ref('vitals_adult')}").status_code == 200
        assert relative.get(f"/{hidden}/_history").status_code == 403
        # an _include from a visible resource does not reach it either
        report = world.create(
            {
                "resourceType": "DiagnosticReport",
                "status": "final",
                "code": {"text": "r"},
                "subject": {"reference": adult},
                "result": [{"reference": hidden}],
            }
        )
        consent(
            world,
            to_relative(
                world,
                **{
                    "class": [
                        {"system": "http://hl7.org/fhir/resource-types", "code": "DiagnosticReport"}
                    ]
                },
            ),
        )
        bundle = relative.get(
            "/DiagnosticReport",
            params={"_id": report.split("/")[1], "_include": "DiagnosticReport:result"},
        ).json()
        found = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}
        assert found == {report}


def test_a_data_reference_grants_that_resource_only(world: World) -> None:
    adult, shared = world.ref("adult"), world.ref("vitals_adult")
    consent(world, to_relative(world, data=[instance(shared)]))
    with world.client(world.ref("relative")) as relative:
        assert seen(relative, adult) == {shared}
        assert counted(relative, adult) == 1
        assert relative.get(f"/{shared}").status_code == 200
        assert reason(relative.get(f"/{world.ref('obs_adult')}")) == "invalid_compartment"
        # another patient's resource named in the Consent stays out of reach
        consent(world, to_relative(world, data=[instance(world.ref("obs_other"))]))
        assert reason(relative.get(f"/{world.ref('obs_other')}")) == "invalid_compartment"


def test_a_consent_the_server_does_not_understand_grants_nothing(world: World) -> None:
    consent(
        world,
        to_relative(
            world,
            securityLabel=[{"system": f"{TERMINOLOGY}/v3-Confidentiality", "code": "N"}],
        ),
    )
    consent(
        world,
        {
            "type": "permit",
            "actor": [
                {"role": {"text": "grantee"}, "reference": {"reference": world.ref("relative")}}
            ],
            "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}],
        },
    )
    with world.client(world.ref("relative")) as relative:
        assert reason(relative.get(f"/{world.ref('obs_adult')}")) == "consent_required"


def test_a_deny_consent_overrides_a_permit(world: World) -> None:
    consent(world, to_relative(world))
    with world.client(world.ref("relative")) as relative:
        assert relative.get(f"/{world.ref('obs_adult')}").status_code == 200
        consent(world, {**to_relative(world), "type": "deny"})
        assert reason(relative.get(f"/{world.ref('obs_adult')}")) == "consent_required"


def explain(client: httpx.Client, **values_: str) -> list[dict[str, Any]]:
    response = client.post("/$explain-access", json=resources.parameters(**values_))
    assert response.status_code == 200, response.text
    answer: list[dict[str, Any]] = response.json()["parameter"]
    return answer


def test_explain_access_shows_how_each_consent_is_read(world: World) -> None:
    hidden = world.ref("obs_adult")
    granting = consent(
        world, to_relative(world, provision=[{"type": "deny", "data": [instance(hidden)]}])
    )
    unknown = consent(world, to_relative(world, dataPeriod={"start": "2020-01-01"}))
    consent(  # about another actor: not shown to the relative
        world,
        {
            "type": "permit",
            "actor": [{"role": IRCP, "reference": {"reference": world.ref("parent")}}],
        },
    )
    with world.client(world.ref("relative")) as relative:
        answer = explain(relative, operation="search", resourceType="Observation")
    by_name: dict[str, list[dict[str, Any]]] = {}
    for p in answer:
        by_name.setdefault(p["name"], []).append(p)
    assert by_name["allowed"][0]["valueBoolean"] is True
    assert (
        by_name["part"][0]["valueString"] == f"{world.ref('adult')}: all but {hidden.split('/')[1]}"
    )
    read = {
        c["part"][0]["valueReference"]["reference"]: [x["valueString"] for x in c["part"][1:]]
        for c in by_name["consent"]
    }
    assert set(read) == {granting, unknown}
    assert any("types Observation" in line and "grantees" in line for line in read[granting])
    assert any("nested deny" in line and hidden in line for line in read[granting])
    assert any("not understood: provision.dataPeriod" in line for line in read[unknown])


def test_a_guardian_cannot_grant_itself_in_a_nested_provision(
    fam: World, db: psycopg.Connection[Any]
) -> None:
    john = fam.patient("John", years_ago(40))
    with fam.client(john) as j:
        kid, own_link = add_child_and_link(j, john, "Kim", years_ago(7))
        granny = fam.posted(resources.related_person(kid, active=None))
        # a deny to the grandmother, with a nested permit to the guardian's own link
        granny_ref = f"RelatedPerson/{granny['id']}"
        deny = {**permit(granny_ref, provision=[permit(own_link)]), "type": "deny"}
        body = resources.consent(kid, deny)
        before = snapshot(db)
        refused = j.post("/Consent", json=body)
        assert refused.status_code == 403, refused.text
        assert snapshot(db) == before
        # the same Consent naming someone else in the nested provision is the guardian's to give
        nested = body["provision"]["provision"][0]["actor"][0]["reference"]
        nested["reference"] = f"RelatedPerson/{granny['id']}"
        assert j.post("/Consent", json=body).status_code == 201
