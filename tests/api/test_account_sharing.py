"""`/account/sharing` over HTTP (issue 14, item 2): an adult shares with her family and stops it;
a parent manages his minor child's sharing; every refusal (no CSRF token, a person outside the
family, bad input, the engine's no, too many changes) is a page in words and writes nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from fhir_server.web import acting
from tests.support.authorize import Form, add_user, browser, form, forms, sign_in
from tests.support.resources import related_person
from tests.support.servers import LiveServer
from tests.support.world import World, jane_consent, make_family, snapshot

PATH = "/account/sharing"


@pytest.fixture(scope="module")
def family(make_world: Callable[..., World]) -> World:
    world: World = make_world(people=False, tag_length=8)
    make_family(world)
    # Mary's grandmother: someone besides her father that she (or he, for her) may share with
    world.ids["granny"] = world.create(
        related_person(world.ref("mary"), "GRMTH", name=[{"given": ["Rose"], "family": "Doe"}])
    )
    return world


@contextmanager
def signed_in(live_server: LiveServer, database_url: str, fhir_user: str) -> Iterator[httpx.Client]:
    """A browser-like client signed in as a new account of `fhir_user`."""
    with browser(live_server.origin) as web:
        answer = sign_in(web, PATH, add_user(database_url, fhir_user))
        assert answer.status_code == 303, answer.text
        yield web


def token(web: httpx.Client, path: str = PATH) -> str:
    page = web.get(path)
    assert page.status_code == 200, page.text
    return form(page.text, "/signout").hidden()["csrf_token"]


def grant_form(html: str) -> Form:
    """The page's form that shares (the record chooser is a GET form to the same path)."""
    return next(f for f in forms(html) if f.action == PATH and f.method == "post")


def consents(db: psycopg.Connection[Any], patient: str) -> list[tuple[str, int, dict[str, Any]]]:
    rows = db.execute(
        "SELECT id, version_id, content FROM resources WHERE resource_type = 'Consent'"
        " AND content->'patient'->>'reference' = %s ORDER BY last_updated",
        (patient,),
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def test_an_adult_shares_her_lab_results_until_a_day_and_stops(
    family: World, live_server: LiveServer, database_url: str, db: psycopg.Connection[Any]
) -> None:
    jane, rp = family.ref("jane"), family.ref("rp_jane")
    end = (date.today() + timedelta(days=30)).isoformat()
    with signed_in(live_server, database_url, jane) as web:
        page = web.get(PATH)
        grant = grant_form(page.text)
        assert grant.hidden()["for"] == jane
        assert {i.label for i in grant.options("scope")} >= {"Lab results", "Contact details"}
        sent = web.post(
            PATH,
            data={
                "csrf_token": grant.hidden()["csrf_token"],
                "for": jane,
                "grantee": rp,
                "scope": ["LAB_RESULTS"],
                "end": end,
            },
        )
        assert sent.status_code == 303, sent.text
        [(id, version, content)] = consents(db, jane)
        assert (version, content["status"]) == (1, "active")
        provision = content["provision"]
        assert provision["actor"][0]["reference"]["reference"] == rp
        assert provision["actor"][0]["role"]["coding"][0]["code"] == "GRANTEE"
        assert provision["period"]["end"] == end
        assert [c["coding"][0]["code"] for c in provision["code"]] == ["LAB_RESULTS"]
        listed = web.get(sent.headers["location"])
        assert "Shared." in listed.text and "lab results" in listed.text
        # the FHIR API shows the same Consent, and John reads her lab result on the next request
        assert family.system.get(f"/Consent/{id}").json()["status"] == "active"
        with family.client(family.ref("john_person"), "user/*.rs") as john:
            assert john.get(f"/{family.ref('obs_jane')}").status_code == 200
            assert john.get(f"/{family.ref('vitals_jane')}").status_code == 403
            # one click stops it: a new version, inactive
            revoke = form(listed.text, f"{PATH}/revoke").hidden()
            assert revoke["consent"] == f"Consent/{id}"
            stopped = web.post(f"{PATH}/revoke", data=revoke)
            assert stopped.status_code == 303, stopped.text
            [(_, version, content)] = consents(db, jane)
            assert (version, content["status"]) == (2, "inactive")
            assert john.get(f"/{family.ref('obs_jane')}").status_code == 403
        after = web.get(stopped.headers["location"])
        assert "Stopped." in after.text and f"{PATH}/revoke" not in after.text


def test_without_a_csrf_token_nothing_is_written(
    family: World, live_server: LiveServer, database_url: str, db: psycopg.Connection[Any]
) -> None:
    jane = family.ref("jane")
    with signed_in(live_server, database_url, jane) as web:
        before = snapshot(db)
        data = {"for": jane, "grantee": family.ref("rp_jane"), "scope": "LAB_RESULTS"}
        refused = web.post(PATH, data=data)
        assert refused.status_code == 403 and "CSRF" in refused.text
        forged = web.post(PATH, data={**data, "csrf_token": "forged"})
        assert forged.status_code == 403
        assert (
            web.post(f"{PATH}/revoke", data={"for": jane, "consent": "Consent/x"}).status_code
            == 403
        )
        assert snapshot(db) == before


def test_someone_outside_the_family_or_bad_input_writes_nothing(
    family: World, live_server: LiveServer, database_url: str, db: psycopg.Connection[Any]
) -> None:
    jane = family.ref("jane")
    stranger = family.create(related_person(family.ref("tom"), "BRO"))
    with signed_in(live_server, database_url, jane) as web:
        csrf = token(web)
        good = {
            "csrf_token": csrf,
            "for": jane,
            "grantee": family.ref("rp_jane"),
            "scope": "LAB_RESULTS",
        }
        before = snapshot(db)
        cases = {
            "choose a family member": {**good, "grantee": stranger},
            "choose a family member ": {**good, "grantee": "RelatedPerson/nobody"},
            "tick at least one": {k: v for k, v in good.items() if k != "scope"},
            "the end date is in the past": {
                **good,
                "end": (date.today() - timedelta(days=1)).isoformat(),
            },
            "is not a date": {**good, "end": "31/03/2030"},
            "unknown kind of data": {**good, "scope": "EVERYTHING"},
        }
        for words, data in cases.items():
            answer = web.post(PATH, data=data)
            assert answer.status_code == 400, (words, answer.text)
            assert words.strip() in answer.text.lower(), words
            assert 'role="alert"' in answer.text
        assert snapshot(db) == before


def test_a_parent_manages_his_minor_childs_sharing(
    family: World, live_server: LiveServer, database_url: str, db: psycopg.Connection[Any]
) -> None:
    mary, granny = family.ref("mary"), family.ref("granny")
    with signed_in(live_server, database_url, family.ref("john_person")) as web:
        page = web.get(PATH, params={"for": mary})
        assert page.status_code == 200
        assert f'value="{mary}"' in page.text and f'value="{family.ref("tom")}"' in page.text
        grant = grant_form(page.text)
        assert grant.hidden()["for"] == mary
        # his own RelatedPerson is not offered: a relative does not grant itself access
        assert family.ref("rp_mary") not in page.text.split("sharing-grantee", 1)[1]
        data = {**grant.hidden(), "grantee": granny, "scope": ["APPOINTMENTS", "LAB_RESULTS"]}
        sent = web.post(PATH, data=data)
        assert sent.status_code == 303, sent.text
        [(id, _, content)] = consents(db, mary)
        assert content["provision"]["actor"][0]["reference"]["reference"] == granny
        assert "Rose Doe" in web.get(sent.headers["location"]).text
        # Jane's record is not his to manage: the page refuses, in words
        away = web.get(PATH, params={"for": family.ref("jane")})
        assert away.status_code == 404 and "not a record you look after" in away.text
        before = snapshot(db)
        tampered = {
            **grant.hidden(),
            "for": family.ref("jane"),
            "grantee": family.ref("rp_jane"),
            "scope": "LAB_RESULTS",
        }
        assert web.post(PATH, data=tampered).status_code in {400, 403}
        assert snapshot(db) == before
    family.system.put(
        f"/Consent/{id}", json={**family.system.get(f"/Consent/{id}").json(), "status": "inactive"}
    )


def test_a_minors_attempt_the_engine_refuses_is_shown_in_words(
    family: World, live_server: LiveServer, database_url: str, db: psycopg.Connection[Any]
) -> None:
    """Mary (12) tries to stop a share of her brother's record: the engine refuses the read of
    that Consent as it would through the FHIR API, and the page says so."""
    tom = family.ref("tom")
    theirs = family.create(jane_consent(family, "APPOINTMENTS") | {"patient": {"reference": tom}})
    with signed_in(live_server, database_url, family.ref("mary")) as web:
        before = snapshot(db)
        answer = web.post(
            f"{PATH}/revoke", data={"csrf_token": token(web), "for": tom, "consent": theirs}
        )
        assert answer.status_code == 403
        assert "not a record you look after" in answer.text
        assert "invalid_compartment" in answer.text
        assert snapshot(db) == before
        assert family.system.get(f"/{theirs}").json()["status"] == "active"


def test_too_many_changes_get_a_429_page(
    family: World, live_server: LiveServer, database_url: str, db: psycopg.Connection[Any]
) -> None:
    jane = family.ref("jane")
    with signed_in(live_server, database_url, jane) as web:
        csrf = token(web)
        empty = {"csrf_token": csrf, "for": jane, "grantee": family.ref("rp_jane")}
        for _ in range(acting.CHANGES_PER_MINUTE):
            assert web.post(PATH, data=empty).status_code == 400
        before = snapshot(db)
        limited = web.post(PATH, data={**empty, "scope": "LAB_RESULTS"})
        assert limited.status_code == 429
        assert "too many changes" in limited.text.lower()
        assert "<html" in limited.text.lower()
        assert snapshot(db) == before
