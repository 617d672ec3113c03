"""Read replicas with bounded staleness (storage/replicas.py, api/routing.py, docs/scaling.md
"Read replicas"), against a real streaming replica: a primary and a `pg_basebackup -R` replica of
it from the embedded PostgreSQL's binaries (tests/support/replica.py), started for this module.

Two servers share them: `fast` with the default FHIR_REPLICA_MAX_LAG_MS (100 ms), and `tolerant`
with 10 s, on which a replica whose replay is paused stays eligible for a while: the reads it
routes there show that a revocation still counts at once (the facts' epoch is checked on the
primary after the replica's data), and that a client's token keeps its own writes visible. The
server's Prometheus counters say which server served each read.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from fhir_server.settings import Settings
from fhir_server.storage.database import migrate
from fhir_server.storage.replicas import display_name, parse_lsn
from tests.support import pooler
from tests.support import world as worlds
from tests.support.replica import Pair, start_pair
from tests.support.resources import GRANTEE, LAB, consent, permit, related_person, years_ago
from tests.support.servers import LiveServer
from tests.support.tokens import auth
from tests.support.world import World


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    if pooler.ACTIVE is not None:
        pytest.skip("the replica pair has its own primary, not the session's pooled one")
    made = start_pair()
    try:
        migrate(made.primary.url("fhir"))
        made.caught_up()
        yield made
    finally:
        made.stop()


def _server(pair: Pair, max_lag_ms: int) -> LiveServer:
    settings = Settings(
        replica_urls=(pair.replica.url("fhir"),), replica_max_lag_ms=max_lag_ms, db_pool_size=4
    )
    return LiveServer(settings, pair.primary.url("fhir"))


@pytest.fixture(scope="module")
def fast(pair: Pair) -> Iterator[LiveServer]:
    with _server(pair, 100) as live:
        yield live


@pytest.fixture(scope="module")
def tolerant(pair: Pair) -> Iterator[LiveServer]:
    with _server(pair, 10_000) as live:
        yield live


@pytest.fixture
def world(fast: LiveServer) -> Iterator[World]:
    with httpx.Client(base_url=f"{fast.origin}/fhir", timeout=30, headers=auth()) as system:
        yield worlds.make_world(fast.origin, system, people=False)


@pytest.fixture
def paused(pair: Pair) -> Iterator[Pair]:
    pair.caught_up()
    pair.pause()
    try:
        yield pair
    finally:
        pair.resume()
        pair.caught_up()


def replica_name(pair: Pair) -> str:
    return display_name(pair.replica.url("fhir"))


def metric(server: LiveServer, name: str, **labels: str) -> float:
    """A counter's value on `server` (0 when it was never counted)."""
    text = httpx.get(f"{server.origin}/metrics", timeout=10).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if match and match[1] == name and (match[2] or "") == wanted:
            return float(match[3])
    return 0.0


def routed(server: LiveServer, target: str) -> float:
    return metric(server, "db_reads_routed_total", target=target)


def fallbacks(server: LiveServer, reason: str) -> float:
    return metric(server, "db_replica_fallbacks_total", reason=reason)


def family(world: World) -> dict[str, str]:
    """An adult, her spouse (RelatedPerson), her Consent sharing lab results with him, a lab."""
    adult = world.create({"resourceType": "Patient", "birthDate": years_ago(30)})
    spouse = world.create(related_person(adult, "SPS"))
    shared = world.create(
        consent(
            adult,
            permit(spouse, "LAB_RESULTS", role=GRANTEE),
            scope={"coding": [{"code": "patient-privacy"}]},
            category={"coding": [{"code": "INFA"}]},
        )
    )
    lab = world.observation(adult, "replica-lab", LAB)
    return {"adult": adult, "spouse": spouse, "consent": shared, "lab": lab}


def revoke(system: httpx.Client, reference: str) -> None:
    content = system.get(f"/{reference}").json()
    content["status"] = "inactive"
    response = system.put(f"/{reference}", json=content)
    assert response.status_code == 200, response.text


def on_replica(server: LiveServer, pair: Pair, request: Callable[[], httpx.Response]) -> Any:
    """`request` (a read) made until the replica serves it (it may lag a moment behind the
    writes just made): its response."""
    deadline = time.monotonic() + 20
    while True:
        pair.caught_up()
        time.sleep(0.15)  # the sampler's next rounds see it
        before = routed(server, replica_name(pair))
        response = request()
        if routed(server, replica_name(pair)) > before:
            return response
        assert time.monotonic() < deadline, "no read was routed to the replica"


def caller(server: LiveServer, fhir_user: str) -> httpx.Client:
    """A client of `server` acting as `fhir_user` (every scope; the policy decides)."""
    return httpx.Client(
        base_url=f"{server.origin}/fhir", timeout=30, headers=auth(fhir_user, "user/*.cruds")
    )


def system_client(server: LiveServer, **headers: str) -> httpx.Client:
    return httpx.Client(base_url=f"{server.origin}/fhir", timeout=30, headers={**auth(), **headers})


def test_a_relatives_reads_and_searches_go_to_a_current_replica(
    world: World, fast: LiveServer, pair: Pair
) -> None:
    f = family(world)
    checked = metric(fast, "db_replica_epoch_checks", what="checks")
    with world.client(f["spouse"]) as spouse:
        response = on_replica(fast, pair, lambda: spouse.get(f"/{f['lab']}"))
        assert response.status_code == 200
        assert response.json()["id"] == f["lab"].split("/")[1]
        found = on_replica(
            fast, pair, lambda: spouse.get("/Observation", params={"patient": f["adult"]})
        )
        assert found.status_code == 200
        assert [e["resource"]["id"] for e in found.json()["entry"]] == [f["lab"].split("/")[1]]
        history = on_replica(fast, pair, lambda: spouse.get(f"/{f['lab']}/_history"))
        assert history.status_code == 200 and history.json()["total"] == 1
    # each replica read's facts were checked on the primary after its data
    assert metric(fast, "db_replica_epoch_checks", what="checks") >= checked + 3
    assert (
        0
        < metric(fast, "db_replica_epoch_checks", what="statements")
        <= metric(fast, "db_replica_epoch_checks", what="checks")
    )


@pytest.mark.parametrize("pause", [True, False], ids=["replay paused", "replaying"])
def test_a_revoked_consent_counts_at_once_for_reads_routed_to_a_replica(
    world: World, tolerant: LiveServer, pair: Pair, pause: bool
) -> None:
    f = family(world)
    with caller(tolerant, f["spouse"]) as spouse, system_client(tolerant) as system:
        # the spouse's facts are cached, and the replica serves him
        assert on_replica(tolerant, pair, lambda: spouse.get(f"/{f['lab']}")).status_code == 200
        if pause:
            pair.pause()
        try:
            before = fallbacks(tolerant, "facts")
            to_replica = routed(tolerant, replica_name(pair))
            revoke(system, f["consent"])
            # the replica (paused: it still has the active Consent) is eligible on this server,
            # and is used; the facts' epoch, read on the primary after it, has moved
            denied = spouse.get(f"/{f['lab']}")
            assert denied.status_code == 403, denied.text
            searched = spouse.get("/Observation", params={"patient": f["adult"]})
            assert searched.status_code in (200, 403)
            assert not searched.json().get("entry"), searched.text
            # the read was routed to the replica, whose answer the moved epoch dropped
            assert fallbacks(tolerant, "facts") == before + 1
            assert routed(tolerant, replica_name(pair)) >= to_replica
            if pause:
                # the replica has not replayed the revocation: its data still says active
                status = pair.replica.execute(
                    "SELECT content->>'status' FROM resources"
                    " WHERE resource_type = 'Consent' AND id = %s",
                    "fhir",
                    (f["consent"].split("/")[1],),
                )
                assert status == "active"
        finally:
            if pause:
                pair.resume()
        # and it stays denied, wherever it is served
        assert on_replica(tolerant, pair, lambda: spouse.get(f"/{f['lab']}")).status_code == 403


def test_a_clients_token_shows_it_its_own_writes(
    world: World, tolerant: LiveServer, paused: Pair
) -> None:
    with system_client(tolerant) as system:
        created = system.post(
            "/Patient", json={"resourceType": "Patient", "birthDate": years_ago(40)}
        )
        assert created.status_code == 201
        token = created.headers["X-FHIR-Read-After"]
        assert parse_lsn(token) is not None
        reference = f"/Patient/{created.json()['id']}"
        # without the token, the paused replica (eligible within 10 s) answers: not there yet
        assert system.get(reference).status_code == 404
        before = fallbacks(tolerant, "token")
        seen = system.get(reference, headers={"X-FHIR-Read-After": token})
        assert seen.status_code == 200
        assert fallbacks(tolerant, "token") == before + 1
        # a search and the cookie form too
        searched = system.get(
            "/Patient",
            params={"_id": created.json()["id"]},
            headers={"Cookie": f"fhir_read_after={token}"},
        )
        assert searched.status_code == 200 and len(searched.json()["entry"]) == 1
        assert fallbacks(tolerant, "token") == before + 2


def test_a_malformed_token_is_refused(tolerant: LiveServer) -> None:
    with system_client(tolerant, **{"X-FHIR-Read-After": "yesterday"}) as system:
        response = system.get("/Patient")
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert "X-FHIR-Read-After" in issue["diagnostics"]
    assert issue["expression"] == ["http.X-FHIR-Read-After"]


def test_a_replica_paused_longer_than_the_max_lag_is_skipped(
    world: World, fast: LiveServer, paused: Pair
) -> None:
    before = fallbacks(fast, "lagging")
    to_replica = routed(fast, replica_name(paused))
    created = world.create({"resourceType": "Patient", "birthDate": years_ago(50)})
    time.sleep(0.4)  # four times the max lag
    assert world.system.get(f"/{created}").status_code == 200  # from the primary
    assert fallbacks(fast, "lagging") == before + 1
    assert routed(fast, replica_name(paused)) == to_replica


def test_a_stopped_replica_is_skipped_and_used_again_when_back(
    world: World, fast: LiveServer, pair: Pair
) -> None:
    f = family(world)
    with world.client(f["spouse"]) as spouse:
        assert on_replica(fast, pair, lambda: spouse.get(f"/{f['lab']}")).status_code == 200
        pair.replica.stop()
        try:
            before = fallbacks(fast, "down") + fallbacks(fast, "failed")
            time.sleep(0.3)  # the sampler notices
            for _ in range(3):
                assert spouse.get(f"/{f['lab']}").status_code == 200
            assert fallbacks(fast, "down") >= before + 2
        finally:
            pair.replica.start()
        assert on_replica(fast, pair, lambda: spouse.get(f"/{f['lab']}")).status_code == 200


def test_writes_conditional_operations_and_bundles_stay_on_the_primary(
    tolerant: LiveServer, paused: Pair
) -> None:
    """With replay paused, the replica is still eligible for reads on this server; writes that
    went there would fail (a standby is read-only) or read stale data."""
    counted = {t: routed(tolerant, t) for t in ("primary", replica_name(paused))}
    tag = f"replica-{time.monotonic_ns()}"
    identifier = {"system": "urn:test:replica", "value": tag}
    patient = {"resourceType": "Patient", "identifier": [identifier]}
    with system_client(tolerant) as system:
        first = system.post(
            "/Patient", json=patient, headers={"If-None-Exist": f"identifier={tag}"}
        )
        assert first.status_code == 201, first.text
        # the conditional create searches the primary: it finds the patient just created
        again = system.post(
            "/Patient", json=patient, headers={"If-None-Exist": f"identifier={tag}"}
        )
        assert again.status_code == 200, again.text
        assert again.json()["id"] == first.json()["id"]
        updated = system.put(f"/Patient?identifier={tag}", json={**patient, "gender": "female"})
        assert updated.status_code == 200, updated.text
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": {**patient, "gender": "male", "id": first.json()["id"]},
                    "request": {"method": "PUT", "url": f"Patient/{first.json()['id']}"},
                },
                {
                    "request": {"method": "GET", "url": f"Patient?identifier={tag}"},
                },
            ],
        }
        answered = system.post("", json=bundle)
        assert answered.status_code == 200, answered.text
        assert "X-FHIR-Read-After" in answered.headers
        deleted = system.delete(f"/Patient?identifier={tag}")
        assert deleted.status_code in (200, 204)
    # none of them was a routed read, and none went to the replica
    assert {t: routed(tolerant, t) for t in counted} == counted
