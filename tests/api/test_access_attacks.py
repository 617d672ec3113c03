"""One regression test per known attack class on compartment access control, through HTTP with
real signed tokens against real PostgreSQL. Each tries to break a rule; denied writes are
followed by proof that nothing changed.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from fhir_server.auth.devkeys import DEV_AUDIENCE, DEV_ISSUER
from tests.support.resources import observation, parameters, values, years_ago
from tests.support.servers import LiveServer
from tests.support.tokens import KEYS_DIR, auth, token
from tests.support.world import World, lab_results_consent, latest_denial, snapshot


@pytest.fixture(scope="module")
def world(make_world: Callable[..., World]) -> World:
    return make_world()


def ids(bundle: dict[str, Any]) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])
    }


def reason(response: httpx.Response) -> str:
    assert response.status_code == 403, response.text
    code: str = response.json()["issue"][0]["details"]["coding"][0]["code"]
    return code


def as_(world: World, key: str, scope: str = "user/*.cruds", **kw: Any) -> httpx.Client:
    return world.client(world.ref(key), scope, **kw)


# --- includes and revincludes across compartments ----------------------------------------------


def test_include_and_revinclude_never_cross_compartments(world: World) -> None:
    # the parent's Observation points at the unlinked patient through `focus`
    sneaky = world.observation(
        world.ref("minor"),
        "sneaky",
        {"text": "x"},
        focus=[{"reference": world.ref("other")}],
        performer=[{"reference": world.ref("parent")}],
    )
    with as_(world, "parent") as parent:
        found = parent.get(
            "/Observation",
            params={"_id": sneaky.split("/")[1], "_include": "Observation:focus"},
        ).json()
        assert ids(found) == {sneaky}
        found = parent.get(
            "/Patient",
            params={"_id": world.ref("other").split("/")[1], "_revinclude": "Observation:subject"},
        ).json()
        assert ids(found) == set()
        # the minor's page revincludes her Observations, never anyone else's
        found = parent.get(
            "/Patient",
            params={
                "_id": world.ref("minor").split("/")[1],
                "_revinclude": "Observation:subject",
                "_include:iterate": "Observation:focus",
            },
        ).json()
        assert world.ref("other") not in ids(found)
        assert world.ref("obs_other") not in ids(found)
        assert world.ref("minor") in ids(found)


# --- chained and _has oracles ----------------------------------------------------------------


def test_chains_and_has_do_not_reveal_hidden_resources(world: World) -> None:
    with as_(world, "relative") as relative:
        # the relative sees the adult's demographics, but not her Observations: `_has` over
        # Observations must not tell it which codes she has
        own = relative.get("/Patient", params={"_id": world.ref("adult").split("/")[1]})
        assert ids(own.json()) == {world.ref("adult")}
        probe = relative.get(
            "/Patient",
            params={
                "_id": world.ref("adult").split("/")[1],
                "_has:Observation:subject:code": "urn:test|adult-lab",
            },
        )
        assert probe.status_code == 200 and ids(probe.json()) == set()
    with as_(world, "parent") as parent:
        # a chain through a patient the parent cannot see matches nothing
        probe = parent.get("/Observation", params={"subject:Patient.family": f"Other{world.tag}"})
        assert probe.status_code == 200 and ids(probe.json()) == set()


# --- history and vread after a link ends -------------------------------------------------------


def test_history_and_vread_end_with_the_link(world: World) -> None:
    ended = world.create(
        {
            "resourceType": "RelatedPerson",
            "active": True,
            "patient": {"reference": world.ref("minor")},
            "relationship": [{"coding": [{"code": "FTH"}]}],
        }
    )
    observation = world.ref("obs_minor_plain")
    with world.client(ended) as father:
        assert father.get(f"/{observation}").status_code == 200
        assert father.get(f"/{observation}/_history/1").status_code == 200
        assert father.get(f"/{observation}/_history").status_code == 200
        content = world.system.get(f"/{ended}").json()
        content["period"] = {"end": years_ago(0, days=1)}
        assert world.system.put(f"/{ended}", json=content).status_code == 200
        for path in (f"/{observation}", f"/{observation}/_history/1", f"/{observation}/_history"):
            assert reason(father.get(path)) == "link_inactive"
        assert reason(father.get("/Observation")) == "link_inactive"


# --- conditional operations matching other compartments ------------------------------------------


def test_conditional_create_searches_only_the_permitted_set(world: World) -> None:
    other_identifier = f"urn:test:obs|{world.tag}-other-lab"
    with as_(world, "adult") as patient:
        created = patient.post(
            "/Observation",
            json=observation(world.ref("adult"), text="mine", category=None),
            headers={"If-None-Exist": f"identifier={other_identifier}"},
        )
        # the other patient's Observation matches the criteria, but is not visible: a new one
        assert created.status_code == 201, created.text
        assert created.json()["id"] != world.ref("obs_other").split("/")[1]
        assert created.json()["subject"]["reference"] == world.ref("adult")


# --- transaction entries ---------------------------------------------------------------------------


def test_one_forbidden_entry_fails_the_whole_transaction(
    world: World, db: psycopg.Connection[Any]
) -> None:
    other = world.system.get(f"/{world.ref('obs_other')}").json()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": observation(world.ref("adult"), text="fine", category=None),
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": {**other, "status": "cancelled"},
                "request": {"method": "PUT", "url": world.ref("obs_other")},
            },
        ],
    }
    before = snapshot(db)
    with as_(world, "adult") as patient:
        response = patient.post("", json=bundle)
        assert reason(response) == "invalid_compartment"
        assert "entry[1]" in response.json()["issue"][0]["expression"][0]
        # a batch answers each entry alone: the forbidden one is a 403 entry
        answered = patient.post("", json={**bundle, "type": "batch"}).json()
        statuses = [e["response"]["status"] for e in answered["entry"]]
        assert statuses[0].startswith("201") and statuses[1].startswith("403")
    assert world.system.get(f"/{world.ref('obs_other')}").json()["status"] == "final"
    assert snapshot(db)[0][0] == before[0][0] + 1  # only the batch's allowed create


# --- patch moving a subject ------------------------------------------------------------------------


def test_patch_or_update_cannot_move_a_resource_out_of_or_into_a_compartment(
    world: World, db: psycopg.Connection[Any]
) -> None:
    mine = world.observation(world.ref("adult"), "movable", {"text": "x"})
    before = snapshot(db)
    with as_(world, "adult") as patient:
        moved = patient.patch(
            f"/{mine}",
            json=[{"op": "replace", "path": "/subject/reference", "value": world.ref("other")}],
            headers={"Content-Type": "application/json-patch+json"},
        )
        assert reason(moved) == "invalid_compartment"
        theirs = world.system.get(f"/{world.ref('obs_other')}").json()
        pulled = patient.put(
            f"/{world.ref('obs_other')}",
            json={**theirs, "subject": {"reference": world.ref("adult")}},
        )
        assert reason(pulled) == "invalid_compartment"
    with as_(world, "parent") as parent:
        # the parent may write the minor's record only when it names the parent too
        content = world.system.get(f"/{world.ref('obs_minor')}").json()
        content.pop("performer")
        assert reason(parent.put(f"/{world.ref('obs_minor')}", json=content)) == (
            "reference_mismatch"
        )
    assert snapshot(db) == before


# --- self-granting through link fields ----------------------------------------------------------------


def test_no_caller_grants_itself_access(world: World, db: psycopg.Connection[Any]) -> None:
    before = snapshot(db)
    consent = lab_results_consent(world)
    with as_(world, "relative") as relative:
        assert reason(relative.post("/Consent", json=consent)) == "invalid_role"
        me = world.system.get(f"/{world.ref('relative')}").json()
        retarget = {**me, "patient": {"reference": world.ref("other")}}
        assert reason(relative.put(f"/{world.ref('relative')}", json=retarget)) == "invalid_role"
    with as_(world, "adult") as patient:
        me = world.system.get(f"/{world.ref('adult')}").json()
        linked = {**me, "link": [{"other": {"reference": world.ref("other")}, "type": "seealso"}]}
        assert reason(patient.put(f"/{world.ref('adult')}", json=linked)) == "invalid_role"
        person = {
            "resourceType": "Person",
            "link": [{"target": {"reference": world.ref("other")}, "assurance": "level4"}],
        }
        assert reason(patient.post("/Person", json=person)) == "invalid_role"
        # a Consent about someone else is outside the patient's compartment
        about_other = {**consent, "patient": {"reference": world.ref("other")}}
        assert reason(patient.post("/Consent", json=about_other)) == "invalid_compartment"
    with as_(world, "doctor") as doctor:
        # a Person linking the doctor to a patient would make the doctor act as that patient
        person = {
            "resourceType": "Person",
            "link": [
                {"target": {"reference": world.ref("doctor")}, "assurance": "level4"},
                {"target": {"reference": world.ref("other")}, "assurance": "level4"},
            ],
        }
        assert reason(doctor.post("/Person", json=person)) == "invalid_role"
        mother = {
            "resourceType": "RelatedPerson",
            "patient": {"reference": world.ref("adult")},
            "relationship": [{"coding": [{"code": "MTH"}]}],
        }
        assert reason(doctor.post("/RelatedPerson", json=mother)) == "invalid_role"
    assert snapshot(db) == before


def test_a_practitioner_cannot_give_itself_care_of_a_stranger(
    make_world: Callable[..., World], db: psycopg.Connection[Any]
) -> None:
    """The doctor cares for the adult only. A CareTeam that names a patient it cares for files
    it in that patient's record, but it would make the doctor a carer of the stranger it is
    about: a write that grants access lands only in records the writer may write for. (A world of
    its own: the denials' AuditEvents name both patients.)"""
    world = make_world()
    doctor, adult, other = world.ref("doctor"), world.ref("adult"), world.ref("other")
    takeover = {
        "resourceType": "CareTeam",
        "status": "active",
        "subject": {"reference": other},
        "participant": [{"member": {"reference": doctor}}, {"member": {"reference": adult}}],
    }
    before = snapshot(db)
    with as_(world, "doctor") as caller:
        assert reason(caller.get(f"/{world.ref('obs_other')}")) == "invalid_compartment"
        assert reason(caller.post("/CareTeam", json=takeover)) == "foreign_compartment"
        # nor by moving the doctor's own CareTeam of the adult onto the stranger
        own = world.system.get(f"/{world.ref('careteam')}").json()
        moved = {**own, "participant": [*own["participant"], {"member": {"reference": other}}]}
        assert reason(caller.put(f"/{world.ref('careteam')}", json=moved)) == (
            "foreign_compartment"
        )
        assert snapshot(db) == before
        assert reason(caller.get(f"/{world.ref('obs_other')}")) == "invalid_compartment"
        # a care team of its own patient, with another practitioner, stays the doctor's to write
        colleague = {
            "resourceType": "CareTeam",
            "status": "active",
            "subject": {"reference": adult},
            "participant": [{"member": {"reference": world.ref("stranger")}}],
        }
        created = caller.post("/CareTeam", json=colleague)
        assert created.status_code == 201, created.text
    with as_(world, "stranger") as colleague_client:
        assert colleague_client.get(f"/{world.ref('obs_adult')}").status_code == 200
    assert world.system.delete(f"/CareTeam/{created.json()['id']}").status_code == 204


def test_an_unverified_link_grants_nobody_access(world: World, db: psycopg.Connection[Any]) -> None:
    """A link anyone can make by typing a national id must not open the record to others: an
    unverified link writes no CareTeam, Consent, RelatedPerson or Person, even about its own
    linked patient and even one its account would have created."""
    other, stranger = world.ref("other"), world.ref("stranger")
    care = {
        "resourceType": "CareTeam",
        "status": "active",
        "subject": {"reference": other},
        "participant": [{"member": {"reference": stranger}}],
    }
    consent = lab_results_consent(world)
    consent = {**consent, "patient": {"reference": other}}
    mother = {
        "resourceType": "RelatedPerson",
        "active": True,
        "patient": {"reference": other},
        "relationship": [{"coding": [{"code": "MTH"}]}],
    }
    before = snapshot(db)
    with world.client(world.ref("account")) as unverified:
        for body in (care, consent):
            answer = unverified.post(f"/{body['resourceType']}", json=body)
            assert reason(answer) == "unverified_link", body["resourceType"]
        # the policy already keeps a patient's identity from writing RelatedPersons
        assert reason(unverified.post("/RelatedPerson", json=mother)) == "invalid_role"
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": care, "request": {"method": "POST", "url": "CareTeam"}}],
        }
        assert reason(unverified.post("", json=bundle)) == "unverified_link"
    assert snapshot(db) == before
    with as_(world, "stranger") as practitioner:
        assert reason(practitioner.get(f"/{world.ref('obs_other')}")) == "invalid_compartment"


# --- mass-assigned meta ---------------------------------------------------------------------------


def test_meta_labels_and_version_from_a_patient_are_ignored(world: World) -> None:
    with as_(world, "adult") as patient:
        created = patient.post(
            "/Observation",
            json={
                "resourceType": "Observation",
                "meta": {
                    "versionId": "99",
                    "security": [{"system": "urn:x", "code": "R"}],
                    "tag": [{"system": "urn:x", "code": "vip"}],
                },
                "status": "final",
                "code": {"text": "labels"},
                "subject": {"reference": world.ref("adult")},
            },
        )
        assert created.status_code == 201, created.text
        meta = created.json()["meta"]
        assert meta["versionId"] == "1"
        assert "security" not in meta and "tag" not in meta
    labelled = world.system.post(
        "/Observation",
        json={
            "resourceType": "Observation",
            "meta": {"security": [{"system": "urn:x", "code": "R"}]},
            "status": "final",
            "code": {"text": "labelled"},
            "subject": {"reference": world.ref("adult")},
        },
    ).json()
    with as_(world, "adult") as patient:
        body = {
            **labelled,
            "meta": {"security": [{"system": "urn:x", "code": "N"}]},
            "status": "amended",
        }
        updated = patient.put(f"/Observation/{labelled['id']}", json=body)
        assert updated.status_code == 200, updated.text
        assert updated.json()["meta"]["security"] == [{"system": "urn:x", "code": "R"}]


# --- 403-versus-404 oracles ---------------------------------------------------------------------------


def test_hidden_and_missing_resources_get_the_same_answer(world: World) -> None:
    missing = f"Observation/{uuid.uuid4()}"
    hidden = world.ref("obs_other")
    with as_(world, "adult") as patient:
        for suffix in ("", "/_history/1", "/_history"):
            a = patient.get(f"/{hidden}{suffix}")
            b = patient.get(f"/{missing}{suffix}")
            assert a.status_code == b.status_code == 403
            assert a.json() == b.json()
        patch = [{"op": "replace", "path": "/status", "value": "amended"}]
        headers = {"Content-Type": "application/json-patch+json"}
        a = patient.patch(f"/{hidden}", json=patch, headers=headers)
        b = patient.patch(f"/{missing}", json=patch, headers=headers)
        assert a.status_code == b.status_code == 403 and a.json() == b.json()
        a = patient.delete(f"/{hidden}")
        b = patient.delete(f"/{missing}")
        assert a.status_code == b.status_code == 403


# --- count oracles --------------------------------------------------------------------------------


def test_counts_and_totals_count_only_what_the_caller_sees(world: World) -> None:
    with as_(world, "parent") as parent:
        visible = parent.get("/Observation", params={"_count": "1000"}).json()
        count = parent.get("/Observation", params={"_summary": "count"}).json()
        assert count["total"] == len(visible.get("entry", []))
        assert all(
            e["resource"]["subject"]["reference"] == world.ref("minor") for e in visible["entry"]
        )
        accurate = parent.get("/Observation", params={"_total": "accurate", "_count": "1"}).json()
        assert accurate["total"] == count["total"]
        estimate = parent.get("/Observation", params={"_total": "estimate"}).json()
        assert "total" not in estimate  # statistics know of rows the parent may not see
        history = parent.get(f"/{world.ref('obs_minor')}/_history").json()
        assert history["total"] == len(history["entry"])
    everything = world.system.get("/Observation", params={"_summary": "count"}).json()
    assert everything["total"] > count["total"]


# --- scope confusion between types ----------------------------------------------------------------


def test_scopes_narrow_the_policy(world: World) -> None:
    adult = world.ref("adult")
    with as_(world, "adult", "patient/Patient.rs", patient=adult.split("/")[1]) as app:
        assert app.get(f"/{adult}").status_code == 200
        assert reason(app.get(f"/{world.ref('obs_adult')}")) == "insufficient_scope"
        assert reason(app.get("/Observation")) == "insufficient_scope"
        denied = app.get(f"/{world.ref('obs_adult')}")
        assert 'error="insufficient_scope"' in denied.headers["WWW-Authenticate"]
    with as_(world, "adult", "user/Observation.rs") as reader:
        content = world.system.get(f"/{world.ref('obs_adult')}").json()
        assert reason(reader.put(f"/{world.ref('obs_adult')}", json=content)) == (
            "insufficient_scope"
        )
    granular = "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
    with as_(world, "adult", granular) as labs:
        assert labs.get(f"/{world.ref('obs_adult')}").status_code == 200
        assert reason(labs.get(f"/{world.ref('vitals_adult')}")) == "invalid_compartment"
        found = ids(labs.get("/Observation", params={"subject": adult}).json())
        assert world.ref("obs_adult") in found and world.ref("vitals_adult") not in found
    # a patient/ scope keeps a doctor inside the launch context's compartment
    with as_(world, "doctor", "patient/*.rs", patient=world.ref("minor").split("/")[1]) as app:
        assert reason(app.get(f"/{world.ref('obs_adult')}")) == "invalid_compartment"


# --- token confusion ----------------------------------------------------------------------------------


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": DEV_ISSUER,
        "aud": DEV_AUDIENCE,
        "sub": "x",
        "iat": now,
        "exp": now + 600,
        "scope": "system/*.cruds",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _hmac_token(secret: bytes, kid: str) -> str:
    """HS256 with the server's public key as the shared secret (the classic algorithm
    confusion); built by hand, as PyJWT itself refuses to sign it."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = b64(json.dumps(_claims()).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def test_bad_tokens_get_401_with_a_challenge(world: World) -> None:
    foreign_key = ec.generate_private_key(ec.SECP256R1())
    public_jwks = (KEYS_DIR / "auth" / "jwks.json").read_bytes()
    kid = json.loads(public_jwks)["keys"][0]["kid"]
    candidates = {
        "missing": None,
        "garbage": "not-a-jwt",
        "foreign key": jwt.encode(_claims(), foreign_key, algorithm="ES256", headers={"kid": kid}),
        "alg none": jwt.encode(_claims(), None, algorithm="none"),
        "hmac with the public key": _hmac_token(public_jwks, kid),
        "expired": token(lifetime_seconds=-3600),
        "wrong audience": token(extra={"aud": "https://elsewhere"}),
        "wrong issuer": token(extra={"iss": "https://elsewhere"}),
        "id token": token("Patient/1", "openid fhirUser", extra={"nonce": "n"}),
        "patient scope without patient": token("Patient/1", "patient/*.rs"),
        "user scope without fhirUser": token(None, "user/*.rs"),
    }
    for name, value in candidates.items():
        headers = {"Authorization": f"Bearer {value}"} if value else {}
        response = httpx.get(f"{world.origin}/fhir/{world.ref('adult')}", headers=headers)
        assert response.status_code == 401, (name, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), name
        assert response.json()["issue"][0]["code"] in {"login", "expired"}, name


# --- unverified links ----------------------------------------------------------------------------------


def test_an_unverified_account_sees_only_what_it_created(
    world: World, db: psycopg.Connection[Any]
) -> None:
    account = world.ref("account")
    other = world.ref("other")
    request = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "code": {"text": "home visit"},
        "subject": {"reference": other},
    }
    with world.client(account) as unverified:
        created = unverified.post("/ServiceRequest", json=request)
        assert created.status_code == 201, created.text
        mine = f"ServiceRequest/{created.json()['id']}"
        row = db.execute(
            "SELECT r.created_by, h.created_by FROM resources r JOIN resource_history h"
            " USING (resource_type, id) WHERE r.resource_type = 'ServiceRequest' AND r.id = %s",
            (mine.split("/")[1],),
        ).fetchone()
        assert row == (account, account)
        assert unverified.get(f"/{mine}").status_code == 200
        cancelled = unverified.put(f"/{mine}", json={**created.json(), "status": "revoked"})
        assert cancelled.status_code == 200, cancelled.text
        assert reason(unverified.get(f"/{world.ref('obs_other')}")) == "unverified_link"
        assert reason(unverified.get(f"/{other}")) == "unverified_link"
        # nor does it put data into anyone else's record
        elsewhere = {**request, "subject": {"reference": world.ref("adult")}}
        assert reason(unverified.post("/ServiceRequest", json=elsewhere)) == "unverified_link"
        found = ids(unverified.get("/ServiceRequest", params={"subject": other}).json())
        assert found == {mine}
        # the administrator verifies the link: the rest of the compartment opens
        person = world.system.get(f"/{account}").json()
        person["link"][0]["assurance"] = "level4"
        assert world.system.put(f"/{account}", json=person).status_code == 200
        assert unverified.get(f"/{world.ref('obs_other')}").status_code == 200
        person["link"][0]["assurance"] = "level2"
        assert world.system.put(f"/{account}", json=person).status_code == 200
        assert reason(unverified.get(f"/{world.ref('obs_other')}")) == "unverified_link"


# --- consent, and the 18th birthday ----------------------------------------------------------------------


def test_consent_opens_its_scope_and_revocation_closes_it(world: World) -> None:
    consent = lab_results_consent(world)
    with as_(world, "relative") as relative:
        assert reason(relative.get(f"/{world.ref('obs_adult')}")) == "consent_required"
        granted = world.create(consent)
        assert relative.get(f"/{world.ref('obs_adult')}").status_code == 200
        # LAB_RESULTS does not open her Conditions
        assert reason(relative.get("/Condition")) == "consent_required"
        revoked = {**world.system.get(f"/{granted}").json(), "status": "inactive"}
        assert world.system.put(f"/{granted}", json=revoked).status_code == 200
        assert reason(relative.get(f"/{world.ref('obs_adult')}")) == "consent_required"


def test_turning_18_ends_the_parents_access(world: World) -> None:
    child = world.create({"resourceType": "Patient", "birthDate": years_ago(18, days=-1)})
    mother = world.create(
        {
            "resourceType": "RelatedPerson",
            "patient": {"reference": child},
            "relationship": [{"coding": [{"code": "MTH"}]}],
        }
    )
    record = world.observation(child, "teen", {"text": "x"})
    with world.client(mother) as parent:
        assert parent.get(f"/{record}").status_code == 200
        # the birthday arrives (her birth date moves back by the day that was left)
        patient = world.system.get(f"/{child}").json()
        patient["birthDate"] = years_ago(18)
        assert world.system.put(f"/{child}", json=patient).status_code == 200
        assert reason(parent.get(f"/{record}")) == "consent_required"
        assert parent.get(f"/{child}").status_code == 200  # demographics stay visible


# --- audit ------------------------------------------------------------------------------------------------


def test_denials_are_audited_before_the_response(world: World, db: psycopg.Connection[Any]) -> None:
    with as_(world, "relative") as relative:
        assert reason(relative.get(f"/{world.ref('obs_adult')}")) == "consent_required"
    event = latest_denial(db, world.ref("relative"))
    assert event is not None
    content = event[0]
    assert content["subtype"][0]["code"] == "read"
    assert content["entity"][0]["what"]["reference"] == world.ref("obs_adult")
    assert content["outcomeDesc"].startswith("consent_required")


def test_patients_read_the_audit_trail_of_their_own_compartment(world: World) -> None:
    with as_(world, "adult") as patient:
        assert patient.get(f"/{world.ref('obs_adult')}").status_code == 200
        deadline = time.monotonic() + 10
        while True:
            events = patient.get(
                "/AuditEvent", params={"patient": world.ref("adult"), "_count": "100"}
            ).json()
            if events.get("entry") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert events.get("entry"), "the allowed read was not audited within the flush interval"
        for entry in events["entry"]:
            what = {e["what"]["reference"] for e in entry["resource"].get("entity", [])}
            who = entry["resource"]["agent"][0]["who"].get("reference")
            assert world.ref("adult") in what | {who}
        others = patient.get("/AuditEvent", params={"patient": world.ref("other")}).json()
        assert ids(others) == set()


# --- break-glass ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emergency_server(database_url: str) -> Iterator[LiveServer]:
    from fhir_server.settings import Settings

    with LiveServer(Settings(emergency_bypass=True), database_url) as server:
        yield server


def emergency_accesses(server: LiveServer) -> float:
    text = httpx.get(f"{server.origin}/metrics").text
    found = re.search(r"^emergency_accesses_total (\S+)$", text, re.M)
    assert found is not None
    return float(found.group(1))


def test_break_glass_is_allowed_flagged_and_audited(
    world: World, emergency_server: LiveServer, db: psycopg.Connection[Any]
) -> None:
    target = world.ref("obs_other")
    headers = {**auth(world.ref("stranger"), "user/*.cruds")}
    url = f"{emergency_server.origin}/fhir/{target}"
    assert reason(httpx.get(url, headers=headers)) == "invalid_compartment"
    # purpose of use without a reason is not enough
    assert reason(httpx.get(url, headers={**headers, "X-Purpose-Of-Use": "BTG"})) == (
        "invalid_compartment"
    )
    emergency = {**headers, "X-Purpose-Of-Use": "BTG", "X-Break-Glass-Reason": "unconscious"}
    before = emergency_accesses(emergency_server)
    response = httpx.get(url, headers=emergency)
    assert response.status_code == 200, response.text
    assert response.headers["X-Emergency-Access"].startswith("break-glass")
    # counted for the alert on any emergency bypass (deploy/prometheus/alerts.yml)
    assert emergency_accesses(emergency_server) == before + 1
    # written before the response: no waiting for the batch
    event = db.execute(
        "SELECT content FROM audit_events WHERE true"
        " AND content->'purposeOfEvent'->0->'coding'->0->>'code' = 'BTG'"
        " AND content->>'outcome' = '0' AND content->'agent'->0->'who'->>'reference' = %s",
        (world.ref("stranger"),),
    ).fetchone()
    assert event is not None
    assert event[0]["purposeOfEvent"][0]["text"] == "unconscious"
    # never for writes, and never on the server without EMERGENCY_BYPASS
    body = world.system.get(f"/{target}").json()
    assert reason(httpx.put(url, json=body, headers=emergency)) == "invalid_compartment"
    plain = httpx.get(f"{world.origin}/fhir/{target}", headers=emergency)
    assert reason(plain) == "invalid_compartment"


# --- explain ---------------------------------------------------------------------------------------------


def test_explain_access_answers_without_acting(world: World) -> None:
    def ask(client: httpx.Client, **inputs: str) -> dict[str, Any]:
        response = client.post("/$explain-access", json=parameters(**inputs))
        assert response.status_code == 200, response.text
        return values(response.json())

    with as_(world, "relative") as relative:
        answer = ask(relative, operation="read", resource=world.ref("obs_adult"))
        assert answer["allowed"] is False and answer["reason"] == "consent_required"
        assert "relatedperson_compartment" in answer["rule"]
        answer = ask(relative, operation="read", resource=world.ref("adult"))
        assert answer["allowed"] is True
        forbidden = relative.post(
            "/$explain-access",
            json={
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "operation", "valueCode": "read"},
                    {"name": "resource", "valueString": world.ref("obs_adult")},
                    {"name": "identity", "valueString": world.ref("doctor")},
                ],
            },
        )
        assert forbidden.status_code == 403
    answer = ask(
        world.system, operation="search", resourceType="Observation", identity=world.ref("parent")
    )
    assert answer["allowed"] is True and answer["compartment"] == world.ref("minor")
    answer = ask(
        world.system,
        operation="update",
        resource=world.ref("obs_minor_plain"),
        identity=world.ref("parent"),
    )
    assert answer["allowed"] is False and answer["reason"] == "reference_mismatch"


def test_a_revocation_on_one_server_counts_on_every_other(
    world: World, emergency_server: LiveServer
) -> None:
    """Facts are cached per server while the access epoch is unchanged: a write through one
    server must end the access that another server has cached."""
    child = world.create({"resourceType": "Patient", "birthDate": years_ago(5)})
    guardian = world.create(
        {
            "resourceType": "RelatedPerson",
            "patient": {"reference": child},
            "relationship": [{"coding": [{"code": "GUARD"}]}],
        }
    )
    record = world.observation(child, "cached", {"text": "x"})
    other = httpx.Client(
        base_url=f"{emergency_server.origin}/fhir", timeout=30, headers=auth(guardian, "user/*.rs")
    )
    with other:
        for _ in range(3):  # the second server now has the guardian's facts cached
            assert other.get(f"/{record}").status_code == 200
        ended = {**world.system.get(f"/{guardian}").json(), "active": False}
        assert world.system.put(f"/{guardian}", json=ended).status_code == 200  # first server
        assert reason(other.get(f"/{record}")) == "link_inactive"


def test_system_history_and_compartment_search_show_only_the_permitted_set(world: World) -> None:
    with as_(world, "parent") as parent:
        history = parent.get("/_history", params={"_count": "1000"}).json()
        seen = ids(history)
        assert world.ref("obs_minor") in seen
        assert world.ref("obs_other") not in seen and world.ref("obs_adult") not in seen
        # everything in it is in the minor's compartment (or the parent's own record)
        for entry in history["entry"]:
            resource = entry.get("resource")
            if resource is None:
                continue
            reference = f"{resource['resourceType']}/{resource['id']}"
            assert world.ref("minor") in str(resource) or reference in {
                world.ref("minor"),
                world.ref("parent"),
            }, reference
        everything = parent.get(f"/{world.ref('minor')}/*", params={"_count": "100"}).json()
        assert world.ref("obs_minor") in ids(everything)
        elsewhere = parent.get(f"/{world.ref('other')}/*").json()
        assert ids(elsewhere) == set()
