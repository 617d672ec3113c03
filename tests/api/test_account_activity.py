"""`/account/activity` (issue 14 item 4) and the audit privacy fix: an AuditEvent names only the
patients whose data was touched, so John's activity (page, exports, `AuditEvent?patient=John`)
lists nothing about Mary's or Jane's record that is not John's to see, Jane sees John reading
her labs, and a parent sees his 12-year-old's record but not his adult wife's."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import psycopg
import pytest

from fhir_server.services.workflows.activity import CSV_COLUMNS
from fhir_server.settings import Settings
from fhir_server.validation import default_validator
from tests.support.authorize import add_user, browser, sign_in
from tests.support.servers import LiveServer
from tests.support.tokens import auth
from tests.support.world import World, jane_consent, make_family, make_world

REASON = "unconscious in the emergency room"
INJECTION = '=HYPERLINK("http://evil.example","click")'


@dataclass
class Walk:
    server: LiveServer
    world: World
    ids: dict[str, str]
    doctor: str
    users: dict[str, str]  # name -> username


def wait_for(database_url: str, sql: str, params: tuple[Any, ...], at_least: int = 1) -> None:
    """Allowed reads are stored in batches within about a second: wait until they are."""
    deadline = time.monotonic() + 20
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            row = conn.execute(sql, params).fetchone()
            if row is not None and row[0] >= at_least:
                return
            assert time.monotonic() < deadline, f"not stored in time: {sql} {params}"
            time.sleep(0.2)


def events_naming(database_url: str, entity: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM audit_events WHERE true AND content->'entity' @> %s::jsonb",
            (orjson.dumps([{"what": {"reference": entity}}]).decode(),),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture(scope="module")
def walk(database_url: str) -> Iterator[Walk]:
    settings = Settings(emergency_bypass=True)
    with (
        LiveServer(settings, database_url, fixed_base=True) as server,
        httpx.Client(base_url=f"{server.origin}/fhir", timeout=30, headers=auth()) as system,
    ):
        world = make_world(server.origin, system, people=False)
        make_family(world)
        ids = world.ids
        world.create(jane_consent(world, "LAB_RESULTS"))
        doctor = world.create({"resourceType": "Practitioner", "name": [{"family": "House"}]})
        with world.client(ids["john"]) as john:
            for obs in ("obs_mary", "obs_jane"):
                assert john.get(f"/{ids[obs]}").status_code == 200
        with world.client(doctor) as practitioner:
            for reason in (INJECTION, REASON):  # the plain one newest, first on the page
                glass = practitioner.get(
                    f"/{ids['john']}",
                    headers={"X-Purpose-Of-Use": "BTG", "X-Break-Glass-Reason": reason},
                )
                assert glass.status_code == 200, glass.text
        users = {name: add_user(database_url, ids[name]) for name in ("john", "jane", "mary")}
        for entity in (ids["obs_mary"], ids["obs_jane"]):
            wait_for(
                database_url,
                "SELECT count(*) FROM audit_events WHERE true AND content->'entity' @> %s::jsonb",
                (orjson.dumps([{"what": {"reference": entity}}]).decode(),),
            )
        yield Walk(server, world, ids, doctor, users)


@contextmanager
def signed_in(walk: Walk, name: str) -> Iterator[httpx.Client]:
    with browser(walk.server.origin) as web:
        assert sign_in(web, "/account/activity", walk.users[name]).status_code == 303
        yield web


def bundle_of(web: httpx.Client, **params: str) -> dict[str, Any]:
    answer = web.get("/account/activity.json", params=params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+json")
    found: dict[str, Any] = orjson.loads(answer.content)
    return found


def events(found: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in found.get("entry", ())]


def entities(event: dict[str, Any]) -> set[str]:
    return {e["what"].get("reference", "") for e in event.get("entity", ())}


def test_without_a_session_every_form_goes_to_sign_in(walk: Walk) -> None:
    with browser(walk.server.origin) as web:
        for path in ("/account/activity", "/account/activity.csv", "/account/activity.json"):
            away = web.get(path, params={"patient": "Patient/x"})
            assert away.status_code == 303
            target = urlsplit(away.headers["location"])
            assert target.path == "/signin"
            assert parse_qs(target.query)["next"][0].startswith(path)


def test_john_sees_his_and_his_minor_daughters_record_and_nothing_of_jane(
    walk: Walk, database_url: str
) -> None:
    ids = walk.ids
    with signed_in(walk, "john") as web:
        page = web.get("/account/activity")
        assert page.status_code == 200
        assert "Emergency access (break-glass)" in page.text
        assert REASON in page.text and "activity-emergency" in page.text
        # the page's own lookup of the doctor's name (John may not read Practitioners) is an
        # event of John's that touched no record: stored, it must still not be listed
        wait_for(
            database_url,
            "SELECT count(*) FROM audit_events"
            " WHERE content->'agent'->0->'who'->>'reference' = %s AND NOT content ? 'entity'",
            (ids["john"],),
        )
        shown = events(bundle_of(web))
    mine = {ids["john"], ids["mary"], ids["tom"]}
    assert shown, "John's record has events"
    for event in shown:
        patients = {e for e in entities(event) if e.startswith("Patient/")}
        assert patients and patients <= mine, orjson.dumps(event).decode()
        assert ids["jane"] not in patients
        assert not entities(event) & {ids["obs_jane"], ids["vitals_jane"]}
    assert any(ids["obs_mary"] in entities(e) for e in shown)  # Mary is 12: he sees hers
    glass = [e for e in shown if e.get("purposeOfEvent", [{}])[0].get("text") == REASON]
    assert glass and glass[0]["agent"][0]["who"]["reference"] == walk.doctor


def test_the_fhir_api_names_only_the_patients_whose_data_was_read(
    walk: Walk, database_url: str
) -> None:
    """The privacy fix: John's reads of Mary's and Jane's data are not events of John's record,
    so `AuditEvent?patient=John` (as John, or as anyone who sees his record) lists none."""
    ids = walk.ids
    assert events_naming(database_url, ids["obs_jane"]) >= 1
    with walk.world.client(ids["john"]) as john:
        found = john.get("/AuditEvent", params={"patient": ids["john"], "_count": "1000"})
    assert found.status_code == 200, found.text
    # reads (action R); a search across records (the activity page's own) names each record it
    # covers, as docs/account-activity.md says
    listed = [
        e["resource"] for e in found.json().get("entry", ()) if e["resource"].get("action") == "R"
    ]
    assert listed
    for event in listed:
        named = entities(event)
        assert not named & {ids["obs_mary"], ids["obs_jane"], ids["vitals_jane"]}, event
        assert not named & {ids["mary"], ids["jane"], ids["tom"]}, event
    # the event of John reading Mary's lab result is Mary's: he acted as her father
    system = walk.world.system
    of_mary = system.get("/AuditEvent", params={"entity": ids["obs_mary"]}).json()
    read = [e["resource"] for e in of_mary["entry"] if e["resource"]["agent"][0].get("altId")]
    assert read
    for event in read:
        assert {e for e in entities(event) if e.startswith("Patient/")} == {ids["mary"]}
        agent = event["agent"][0]
        assert agent["who"] == {"reference": ids["rp_mary"]}
        assert agent["altId"] == ids["john"]


def test_jane_sees_john_reading_her_labs(walk: Walk) -> None:
    ids = walk.ids
    with signed_in(walk, "jane") as web:
        shown = events(bundle_of(web))
        page = web.get("/account/activity", params={"agent": ids["rp_jane"]})
    reads = [e for e in shown if ids["obs_jane"] in entities(e)]
    assert reads and all(e["outcome"] == "0" for e in reads)
    assert reads[0]["agent"][0]["who"]["reference"] == ids["rp_jane"]
    for event in shown:  # her record's events, and her own (a sign-in names no patient)
        assert {e for e in entities(event) if e.startswith("Patient/")} <= {ids["jane"]}
    assert page.status_code == 200
    assert "spouse" in page.text and "observations and lab results" in page.text


def test_filters_by_record_person_and_date(walk: Walk) -> None:
    ids = walk.ids
    with signed_in(walk, "john") as web:
        marys = events(bundle_of(web, patient=ids["mary"]))
        doctors = events(bundle_of(web, agent=walk.doctor))
        future = events(bundle_of(web, **{"from": "2999-01-01"}))
        past = events(bundle_of(web, to="2000-01-01"))
        today = time.strftime("%Y-%m-%d", time.gmtime())
        todays = events(bundle_of(web, **{"from": today, "to": today}))
    assert marys and all(ids["mary"] in entities(e) for e in marys)
    assert len(doctors) >= 2
    assert all(e["agent"][0]["who"]["reference"] == walk.doctor for e in doctors)
    assert future == [] and past == []
    assert {e["id"] for e in doctors} <= {e["id"] for e in todays}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"from": "yesterday"}, "is not a date"),
        ({"from": "2026-05-02", "to": "2026-05-01"}, "is after"),
        ({"agent": "nobody"}, "is not a reference"),
        ({"page": "not-a-cursor"}, ""),
    ],
)
def test_bad_filters_answer_400_with_a_clear_message(
    walk: Walk, params: dict[str, str], message: str
) -> None:
    with signed_in(walk, "john") as web:
        answer = web.get("/account/activity", params=params)
        export = web.get("/account/activity.csv", params=params)
    assert answer.status_code == 400
    assert 'role="alert"' in answer.text and message in answer.text
    assert export.status_code == 400


def test_someone_elses_record_is_refused_not_shown(walk: Walk) -> None:
    """Jane is an adult: her husband may not filter on her record, nor may Mary on John's."""
    ids = walk.ids
    with signed_in(walk, "john") as web:
        refused = web.get("/account/activity.json", params={"patient": ids["jane"]})
    assert refused.status_code == 400
    assert "not a record whose activity you can see" in refused.text
    assert ids["obs_jane"] not in refused.text
    with signed_in(walk, "mary") as web:
        hers = events(bundle_of(web))
        johns = web.get("/account/activity", params={"patient": ids["john"]})
    assert johns.status_code == 400
    assert hers
    for event in hers:
        # her record's events (a search over several records names each of them)
        assert ids["mary"] in entities(event)
        assert not entities(event) & {ids["jane"], ids["obs_jane"], ids["vitals_jane"]}


def test_exports_are_proper_csv_and_a_valid_fhir_bundle(walk: Walk) -> None:
    with signed_in(walk, "john") as web:
        # the doctor's events: a set the export requests themselves do not grow
        exported = web.get("/account/activity.csv", params={"agent": walk.doctor})
        found = bundle_of(web, agent=walk.doctor)
        via_format = web.get("/account/activity", params={"format": "csv"})
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(exported.text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) - 1 == len(found["entry"])
    assert {r[-1] for r in rows[1:]} == {
        f"AuditEvent/{e['resource']['id']}" for e in found["entry"]
    }
    reasons = [r[CSV_COLUMNS.index("break-glass reason")] for r in rows[1:]]
    assert REASON in reasons
    # CSV injection: the cell a spreadsheet would run is written as text
    assert f"'{INJECTION}" in reasons and INJECTION not in reasons
    assert all(not c.startswith(("=", "+", "-", "@")) for r in rows[1:] for c in r)
    assert via_format.status_code == 200 and via_format.text.startswith(",".join(CSV_COLUMNS[:2]))
    assert found["resourceType"] == "Bundle" and found["type"] == "collection"
    default_validator().validate(found, expected_type="Bundle")
