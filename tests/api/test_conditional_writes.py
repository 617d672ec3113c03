"""Conditional update (`PUT [type]?criteria`) and conditional delete (`DELETE [type]?criteria`),
as interactions and as batch/transaction entries: R4's 0/1/many outcomes, and the caller's
access filter on the search (a match the caller may not see is no match, never counted, never
written), with proof that refused requests change nothing."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
from fhirpy import SyncFHIRClient

from tests.support.resources import observation, patient, transaction
from tests.support.servers import LiveServer
from tests.support.tokens import auth, token
from tests.support.world import World, snapshot


def mrn() -> dict[str, str]:
    return {"system": "urn:test:mrn", "value": uuid.uuid4().hex}


def criteria(ident: dict[str, str]) -> str:
    return f"identifier={ident['system']}|{ident['value']}"


def live(db: psycopg.Connection[Any], ident: dict[str, str]) -> list[tuple[str, int, bool]]:
    """(id, version, deleted) of every live Patient with the identifier."""
    rows = db.execute(
        "SELECT id, version_id, deleted FROM resources WHERE resource_type = 'Patient'"
        " AND content @> %s::jsonb ORDER BY id",
        (f'{{"identifier": [{{"value": "{ident["value"]}"}}]}}',),
    ).fetchall()
    return [(str(r[0]), int(r[1]), bool(r[2])) for r in rows]


def stored(client: httpx.Client, ident: dict[str, str]) -> dict[str, Any]:
    created: dict[str, Any] = client.post("/Patient", json=patient(identifier=[ident])).json()
    return created


def one_stored(client: httpx.Client) -> tuple[dict[str, str], dict[str, Any]]:
    """A new identifier, and the one Patient stored with it."""
    ident = mrn()
    return ident, stored(client, ident)


def conditional_put(client: httpx.Client, ident: dict[str, str], **kwargs: Any) -> httpx.Response:
    """PUT Patient?identifier=…: a Patient with the identifier and the elements; `headers` too."""
    headers = kwargs.pop("headers", None)
    return client.put(
        f"/Patient?{criteria(ident)}", json=patient(identifier=[ident], **kwargs), headers=headers
    )


def stored_twice(client: httpx.Client) -> dict[str, str]:
    """An identifier that two stored Patients share: conditional writes on it are ambiguous."""
    ident = mrn()
    for _ in range(2):
        client.post("/Patient", json=patient(identifier=[ident]))
    return ident


def put_entry(ident: dict[str, str], **elements: Any) -> dict[str, Any]:
    """A Bundle entry: the conditional update of the Patient with this identifier."""
    return {
        "resource": patient(identifier=[ident], **elements),
        "request": {"method": "PUT", "url": f"Patient?{criteria(ident)}"},
    }


def delete_entry(url: str) -> dict[str, Any]:
    return {"request": {"method": "DELETE", "url": url}}


def race(action: Callable[[], None], times: int = 6) -> None:
    """Run the action in as many threads at once, and wait for all."""
    threads = [threading.Thread(target=action) for _ in range(times)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# --- conditional update ------------------------------------------------------------------------


def test_conditional_update_without_match_creates_with_a_server_id(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    ident = mrn()
    response = conditional_put(client, ident, gender="male")
    assert response.status_code == 201, response.text
    created = response.json()
    assert response.headers["Location"].endswith(f"/Patient/{created['id']}/_history/1")
    assert live(db, ident) == [(created["id"], 1, False)]


def test_conditional_update_with_one_match_updates_it(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    ident, existing = one_stored(client)
    response = conditional_put(client, ident, gender="female")
    assert response.status_code == 200, response.text
    assert response.json()["id"] == existing["id"]
    assert response.headers["ETag"] == 'W/"2"'
    assert client.get(f"/Patient/{existing['id']}").json()["gender"] == "female"
    # the body may name the match's id too
    same = conditional_put(client, ident, id=existing["id"], gender="other")
    assert same.status_code == 200, same.text
    assert live(db, ident) == [(existing["id"], 3, False)]


def test_conditional_update_whose_body_names_another_id_is_400_and_changes_nothing(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    ident, existing = one_stored(client)
    before = snapshot(db)
    response = conditional_put(client, ident, id="someone-else", gender="male")
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert "`someone-else`" in issue["diagnostics"]
    assert issue["expression"] == ["id"]
    assert snapshot(db) == before
    assert live(db, ident) == [(existing["id"], 1, False)]


def test_conditional_update_without_match_with_an_id_is_update_as_create(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    ident = mrn()
    chosen = f"chosen-{uuid.uuid4().hex[:12]}"
    response = conditional_put(client, ident, id=chosen)
    assert response.status_code == 201, response.text
    assert response.json()["id"] == chosen
    assert live(db, ident) == [(chosen, 1, False)]


def test_conditional_update_with_several_matches_is_412_and_changes_nothing(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    ident = stored_twice(client)
    before = snapshot(db)
    response = conditional_put(client, ident, gender="male")
    assert response.status_code == 412
    assert snapshot(db) == before
    assert response.json()["issue"][0]["code"] == "duplicate"


def test_conditional_update_honours_if_match(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    ident, existing = one_stored(client)
    before = snapshot(db)
    stale = conditional_put(client, ident, headers={"If-Match": 'W/"7"'})
    assert stale.status_code == 412
    nothing = client.put(
        f"/Patient?{criteria(mrn())}",
        json=patient(identifier=[mrn()]),
        headers={"If-Match": 'W/"1"'},
    )
    assert nothing.status_code == 412
    assert snapshot(db) == before
    fresh = conditional_put(client, ident, headers={"If-Match": 'W/"1"'})
    assert fresh.status_code == 200
    assert fresh.json()["id"] == existing["id"]


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("", "empty"),
        ("_format=json", "empty"),
        ("no-such-parameter=1", "no-such-parameter"),
        ("identifier=a&_count=1", "_count"),
        ("identifier=a&_page=abc", "_page"),
        ("identifier=a&_include=Patient:link", "_include"),
    ],
)
def test_conditional_criteria_are_strict(
    client: httpx.Client, db: psycopg.Connection[Any], query: str, named: str
) -> None:
    before = snapshot(db)
    for response in (
        client.put(f"/Patient?{query}", json={"resourceType": "Patient"}),
        client.delete(f"/Patient?{query}"),
    ):
        assert response.status_code == 400, response.text
        assert named in response.json()["issue"][0]["diagnostics"]
    assert snapshot(db) == before


def test_racing_conditional_updates_create_one_resource(
    client: httpx.Client, live_server: LiveServer, db: psycopg.Connection[Any]
) -> None:
    ident = mrn()
    statuses: list[int] = []

    def upsert() -> None:
        with httpx.Client(base_url=f"{live_server.origin}/fhir", headers=auth()) as c:
            statuses.append(
                c.put(f"/Patient?{criteria(ident)}", json=patient(identifier=[ident])).status_code
            )

    race(upsert)
    assert sorted(statuses) == [200] * 5 + [201]
    assert len(live(db, ident)) == 1


def test_racing_conditional_creates_create_one_resource(
    live_server: LiveServer, db: psycopg.Connection[Any]
) -> None:
    ident = mrn()
    statuses: list[int] = []

    def create() -> None:
        with httpx.Client(base_url=f"{live_server.origin}/fhir", headers=auth()) as c:
            headers = {"If-None-Exist": criteria(ident)}
            statuses.append(
                c.post("/Patient", json=patient(identifier=[ident]), headers=headers).status_code
            )

    race(create)
    assert sorted(statuses) == [200] * 5 + [201]
    assert len(live(db, ident)) == 1


def test_method_on_metadata_is_still_405(client: httpx.Client) -> None:
    assert client.put("/metadata", json={}).status_code == 405
    assert client.delete("/metadata").status_code == 405


# --- conditional delete ------------------------------------------------------------------------


def test_conditional_delete_of_one_match(client: httpx.Client, db: psycopg.Connection[Any]) -> None:
    ident, existing = one_stored(client)
    response = client.delete(f"/Patient?{criteria(ident)}")
    assert response.status_code == 204
    assert response.headers["ETag"] == 'W/"2"'
    assert client.get(f"/Patient/{existing['id']}").status_code == 410


def test_conditional_delete_without_match_is_a_success_that_writes_nothing(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    before = snapshot(db)
    response = client.delete(f"/Patient?{criteria(mrn())}")
    assert response.status_code == 204
    assert "ETag" not in response.headers
    said = client.delete(
        f"/Patient?{criteria(mrn())}", headers={"Prefer": "return=OperationOutcome"}
    )
    assert said.status_code == 200
    assert "nothing was deleted" in said.json()["issue"][0]["diagnostics"]
    assert snapshot(db) == before


def test_conditional_delete_with_several_matches_is_412_and_deletes_none(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    ident = stored_twice(client)
    before = snapshot(db)
    response = client.delete(f"/Patient?{criteria(ident)}")
    assert response.status_code == 412
    assert snapshot(db) == before


def test_capability_statement_declares_conditional_update_and_single_delete(
    client: httpx.Client,
) -> None:
    statement = client.get("/metadata").json()
    for resource in statement["rest"][0]["resource"]:
        assert resource["conditionalUpdate"] is True
        assert resource["conditionalDelete"] == "single"
        assert resource["conditionalCreate"] is True


# --- as Bundle entries -------------------------------------------------------------------------


def test_transaction_upsert_by_conditional_update_resolves_references(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    ident = mrn()
    full_url = f"urn:uuid:{uuid.uuid4()}"

    def upsert(gender: str) -> dict[str, Any]:
        bundle = transaction(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "weight"},
                    "subject": {"reference": full_url},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
            {"fullUrl": full_url, **put_entry(ident, gender=gender)},
        )
        response = client.post("", json=bundle)
        assert response.status_code == 200, response.text
        return response.json()

    first = upsert("male")
    observation, created = first["entry"]
    assert created["response"]["status"] == "201 Created"
    patient_id = created["response"]["location"].split("/")[1]
    obs_id = observation["response"]["location"].split("/")[1]
    assert client.get(f"/Observation/{obs_id}").json()["subject"] == {
        "reference": f"Patient/{patient_id}"
    }
    second = upsert("female")
    observation, updated = second["entry"]
    assert updated["response"]["status"] == "200 OK"
    assert updated["response"]["location"] == f"Patient/{patient_id}/_history/2"
    obs_id = observation["response"]["location"].split("/")[1]
    assert client.get(f"/Observation/{obs_id}").json()["subject"] == {
        "reference": f"Patient/{patient_id}"
    }
    assert live(db, ident) == [(patient_id, 2, False)]


def test_transaction_conditional_delete_and_update_entries(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    doomed, kept = mrn(), mrn()
    doomed_id = stored(client, doomed)["id"]
    kept_id = stored(client, kept)["id"]
    bundle = transaction(
        put_entry(kept, active=True),
        delete_entry(f"Patient?{criteria(doomed)}"),
        delete_entry(f"Patient?{criteria(mrn())}"),
    )
    response = client.post("", json=bundle)
    assert response.status_code == 200, response.text
    updated, deleted, nothing = response.json()["entry"]
    assert updated["response"]["status"] == "200 OK"
    assert deleted["response"]["status"] == "204 No Content"
    assert nothing["response"]["status"] == "204 No Content"
    assert client.get(f"/Patient/{doomed_id}").status_code == 410
    assert client.get(f"/Patient/{kept_id}").json()["active"] is True


def test_transaction_with_ambiguous_conditional_entry_changes_nothing(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    ident = stored_twice(client)
    before = snapshot(db)
    for entry in (put_entry(ident), delete_entry(f"Patient?{criteria(ident)}")):
        bundle = transaction(
            {
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"},
            },
            entry,
        )
        response = client.post("", json=bundle)
        assert response.status_code == 412, response.text
        assert response.json()["issue"][0]["expression"] == ["Bundle.entry[1]"]
        assert snapshot(db) == before


def test_transaction_conditional_delete_overlapping_an_update_is_refused(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    ident, existing = one_stored(client)
    before = snapshot(db)
    bundle = transaction(
        {"resource": existing, "request": {"method": "PUT", "url": f"Patient/{existing['id']}"}},
        delete_entry(f"Patient?{criteria(ident)}"),
    )
    response = client.post("", json=bundle)
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert f"`Patient/{existing['id']}`" in issue["diagnostics"]
    assert snapshot(db) == before


def test_batch_conditional_entries_answer_each_alone(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    ident, twice = mrn(), stored_twice(client)
    bundle = transaction(
        put_entry(ident),
        put_entry(twice),
        delete_entry(f"Patient?{criteria(ident)}"),
        kind="batch",
    )
    response = client.post("", json=bundle)
    assert response.status_code == 200, response.text
    created, ambiguous, deleted = response.json()["entry"]
    assert created["response"]["status"] == "201 Created"
    assert ambiguous["response"]["status"].startswith("412")
    assert deleted["response"]["status"] == "204 No Content"
    assert live(db, ident) == []
    id = created["response"]["location"].split("/")[1]
    assert client.get(f"/Patient/{id}").status_code == 410


# --- security: the search sees only what the caller may see ------------------------------------


@pytest.fixture(scope="module")
def world(make_world: Callable[..., World]) -> World:
    return make_world()


def observation_row(db: psycopg.Connection[Any], ref: str) -> Any:
    rtype, id = ref.split("/")
    return db.execute(
        "SELECT version_id, deleted, content FROM resources WHERE resource_type=%s AND id=%s",
        (rtype, id),
    ).fetchone()


def lab(subject: str, **extra: Any) -> dict[str, Any]:
    return observation(subject, code="probe", **extra)


def hidden_criteria(world: World) -> str:
    """Criteria that match only the Observation of `other`, whom the adult may not see."""
    return f"identifier=urn:test:obs|{world.tag}-other-lab"


def test_conditional_update_never_writes_a_match_the_caller_may_not_see(
    world: World, db: psycopg.Connection[Any]
) -> None:
    hidden = observation_row(db, world.ref("obs_other"))
    before = snapshot(db)
    with world.client(world.ref("adult")) as adult:
        # into the other family's compartment: refused as a create would be
        aimed = adult.put(f"/Observation?{hidden_criteria(world)}", json=lab(world.ref("other")))
        assert aimed.status_code == 403, aimed.text
        # naming the hidden resource's id: refused as `PUT Observation/{id}` would be
        named = adult.put(
            f"/Observation?{hidden_criteria(world)}",
            json=lab(world.ref("adult"), id=world.ref("obs_other").split("/")[1]),
        )
        assert named.status_code == 403, named.text
        assert snapshot(db) == before
        # within the caller's own compartment: the hidden match is no match, a new resource
        own = adult.put(f"/Observation?{hidden_criteria(world)}", json=lab(world.ref("adult")))
        assert own.status_code == 201, own.text
        assert f"Observation/{own.json()['id']}" != world.ref("obs_other")
    assert observation_row(db, world.ref("obs_other")) == hidden


def test_hidden_matches_are_never_counted(world: World, db: psycopg.Connection[Any]) -> None:
    shared = {"system": "urn:test:shared", "value": uuid.uuid4().hex}
    mine = world.create(lab(world.ref("adult"), identifier=[shared]))
    theirs = world.create(lab(world.ref("other"), identifier=[shared]))
    hidden = observation_row(db, theirs)
    with world.client(world.ref("adult")) as adult:
        response = adult.put(
            f"/Observation?{criteria(shared)}",
            json=lab(world.ref("adult"), identifier=[shared], status="amended"),
        )
        assert response.status_code == 200, response.text
        assert f"Observation/{response.json()['id']}" == mine
    assert observation_row(db, theirs) == hidden


def test_conditional_update_in_a_transaction_never_writes_a_hidden_match(
    world: World, db: psycopg.Connection[Any]
) -> None:
    hidden = observation_row(db, world.ref("obs_other"))
    before = snapshot(db)
    bundle = transaction(
        {
            "resource": lab(world.ref("adult")),
            "request": {"method": "POST", "url": "Observation"},
        },
        {
            "resource": lab(world.ref("other"), status="amended"),
            "request": {"method": "PUT", "url": f"Observation?{hidden_criteria(world)}"},
        },
    )
    with world.client(world.ref("adult")) as adult:
        response = adult.post("", json=bundle)
    assert response.status_code == 403, response.text
    assert snapshot(db) == before
    assert observation_row(db, world.ref("obs_other")) == hidden


def test_conditional_delete_by_a_caller_who_may_not_delete_is_403_whatever_matches(
    world: World, db: psycopg.Connection[Any]
) -> None:
    before = snapshot(db)
    with world.client(world.ref("adult")) as adult:
        for query in (hidden_criteria(world), f"identifier=urn:test:obs|{world.tag}-adult-lab"):
            assert adult.delete(f"/Observation?{query}").status_code == 403
            bundle = transaction(delete_entry(f"Observation?{query}"))
            assert adult.post("", json=bundle).status_code == 403
    assert snapshot(db) == before


def test_conditional_delete_never_deletes_a_match_the_caller_may_not_see(
    world: World, db: psycopg.Connection[Any]
) -> None:
    # a system client whose scope covers laboratory Observations only: vital signs are hidden
    vitals = observation_row(db, world.ref("vitals_adult"))
    before = snapshot(db)
    query = f"identifier=urn:test:obs|{world.tag}-adult-vitals"
    with world.client(scope="system/Observation.cruds?category=laboratory") as lab_only:
        response = lab_only.delete(f"/Observation?{query}")
        assert response.status_code == 204
        assert "ETag" not in response.headers
        bundle = transaction(delete_entry(f"Observation?{query}"))
        assert lab_only.post("", json=bundle).status_code == 200
    assert snapshot(db) == before
    assert observation_row(db, world.ref("vitals_adult")) == vitals


# --- conditional patch -------------------------------------------------------------------------

ACTIVATE = [{"op": "add", "path": "/active", "value": True}]
JSON_PATCH = {"Content-Type": "application/json-patch+json"}


def test_conditional_patch_outcomes(client: httpx.Client, db: psycopg.Connection[Any]) -> None:
    one, twice = mrn(), stored_twice(client)
    existing = stored(client, one)
    before = snapshot(db)
    none = client.patch(f"/Patient?{criteria(mrn())}", json=ACTIVATE, headers=JSON_PATCH)
    assert none.status_code == 404
    several = client.patch(f"/Patient?{criteria(twice)}", json=ACTIVATE, headers=JSON_PATCH)
    assert several.status_code == 412
    assert snapshot(db) == before
    patched = client.patch(f"/Patient?{criteria(one)}", json=ACTIVATE, headers=JSON_PATCH)
    assert patched.status_code == 200, patched.text
    assert patched.json()["id"] == existing["id"]
    assert patched.json()["active"] is True


def test_conditional_patch_entries_in_bundles(
    client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    ident, existing = one_stored(client)
    binary = {
        "resourceType": "Binary",
        "contentType": "application/json-patch+json",
        "data": base64.b64encode(json.dumps(ACTIVATE).encode()).decode(),
    }
    entry = {
        "resource": binary,
        "request": {"method": "PATCH", "url": f"Patient?{criteria(ident)}"},
    }
    response = client.post("", json=transaction(entry))
    assert response.status_code == 200, response.text
    assert response.json()["entry"][0]["response"]["location"].startswith(
        f"Patient/{existing['id']}/_history/2"
    )
    # a transaction that patches and updates the same resource writes it twice: refused
    before = snapshot(db)
    current = client.get(f"/Patient/{existing['id']}").json()
    twice = transaction(
        entry,
        {"resource": current, "request": {"method": "PUT", "url": f"Patient/{existing['id']}"}},
    )
    assert client.post("", json=twice).status_code == 400
    missing = {
        "resource": binary,
        "request": {"method": "PATCH", "url": f"Patient?{criteria(mrn())}"},
    }
    assert client.post("", json=transaction(missing)).status_code == 404
    batch = client.post("", json=transaction(missing, entry, kind="batch")).json()
    assert [e["response"]["status"][:3] for e in batch["entry"]] == ["404", "200"]
    assert snapshot(db) != before  # the batch's second entry patched
    assert client.get(f"/Patient/{existing['id']}").json()["meta"]["versionId"] == "3"


def test_conditional_patch_never_reaches_a_hidden_match(
    world: World, db: psycopg.Connection[Any]
) -> None:
    hidden = observation_row(db, world.ref("obs_other"))
    before = snapshot(db)
    amend = [{"op": "replace", "path": "/status", "value": "amended"}]
    with world.client(world.ref("adult")) as adult:
        response = adult.patch(
            f"/Observation?{hidden_criteria(world)}", json=amend, headers=JSON_PATCH
        )
    assert response.status_code == 404
    assert snapshot(db) == before
    assert observation_row(db, world.ref("obs_other")) == hidden


def test_fhirpy_conditional_update_and_delete(
    live_server: LiveServer, db: psycopg.Connection[Any]
) -> None:
    ident = mrn()
    fhir = SyncFHIRClient(f"{live_server.origin}/fhir", authorization=f"Bearer {token()}")
    search = fhir.resources("Patient").search(identifier=f"{ident['system']}|{ident['value']}")
    created, was_created = search.update(fhir.resource("Patient", identifier=[ident]))
    assert was_created and created.id
    updated, was_created = search.update(
        fhir.resource("Patient", identifier=[ident], gender="female")
    )
    assert not was_created and updated.id == created.id
    assert live(db, ident) == [(created.id, 2, False)]
    search.delete()
    assert live(db, ident) == []
