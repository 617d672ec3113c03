"""`/account/family` and its why? page (docs/account-family.md), over HTTP as a browser would
use them, on the seed family of issue 13 (tests/support/world.py `make_family`): John acts for
Mary (12), Tom (8) and his wife Jane; Mary sees her father and the day she comes of age; the
words follow the engine (a Consent revoked through the FHIR API changes the page on the next
request); a why? of a pair that is not the person's own is refused, audited, and changes
nothing."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from compartments.reach import majority_on
from tests.support.authorize import add_user, browser, sign_in
from tests.support.servers import LiveServer
from tests.support.world import World, jane_consent, make_family, snapshot

PAGE = "/account/family"
WHY = "/account/family/why"


@pytest.fixture
def family(make_world: Callable[..., World]) -> World:
    world: World = make_world(people=False)
    make_family(world)
    return world


@contextmanager
def signed_in(server: LiveServer, database_url: str, fhir_user: str) -> Iterator[httpx.Client]:
    """A browser-like client signed in as a new account of `fhir_user`."""
    with browser(server.origin) as web:
        user = add_user(database_url, fhir_user)
        assert sign_in(web, PAGE, user).status_code == 303
        yield web


def text_of(fragment: str) -> str:
    """The visible text of an HTML fragment, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def row(page: str, attribute: str, value: str) -> str:
    """The text of the family page's row whose `data-<attribute>` is `value`."""
    found = re.search(
        rf'<li class="family-person" data-{attribute}="{re.escape(value)}">(.*?)</li>', page, re.S
    )
    assert found is not None, f"no row for {value}"
    return text_of(found.group(1))


def day(d: date) -> str:
    return f"{d.day} {d:%B %Y}"


def born(family: World, name: str) -> date:
    content = family.system.get(f"/{family.ref(name)}").json()
    return date.fromisoformat(content["birthDate"])


def test_john_sees_his_children_whole_and_his_wife_by_her_consent(
    server: LiveServer, database_url: str, family: World
) -> None:
    with signed_in(server, database_url, family.ref("john_person")) as web:
        page = web.get(PAGE)
        assert page.status_code == 200
        mary = row(page.text, "patient", family.ref("mary"))
        assert "Mary is 12: you see her whole record." in mary
        assert "You are her father" in mary
        coming = majority_on(born(family, "mary"), 18)
        assert coming is not None
        assert f"On {day(coming)} Mary turns 18: your full access to her record ends." in mary
        assert "She can then share with you her contact details, clinical summary, visits," in mary
        tom = row(page.text, "patient", family.ref("tom"))
        assert "Tom is 8: you see his whole record." in tom
        jane = row(page.text, "patient", family.ref("jane"))
        assert "Jane is an adult: you see her contact details; she shares nothing more" in jane
        assert "You are her spouse" in jane
        assert "Comes of age" not in jane
        assert 'id="act-for-me-none"' in page.text  # nobody acts for John

        # Jane shares her lab results until a day: the next request says so
        last = date.today() + timedelta(days=100)
        consent = family.posted(
            jane_consent(family, "LAB_RESULTS", period={"end": last.isoformat()})
        )
        jane = row(web.get(PAGE).text, "patient", family.ref("jane"))
        assert (
            f"you see her contact details; she shares her lab results with you until {day(last)}."
            in jane
        )
        with family.client(family.ref("john_person")) as john:
            assert john.get(f"/{family.ref('obs_jane')}").status_code == 200

        # she revokes it through the FHIR API: the page and the API agree on the next request
        consent["status"] = "inactive"
        assert family.system.put(f"/Consent/{consent['id']}", json=consent).status_code == 200
        jane = row(web.get(PAGE).text, "patient", family.ref("jane"))
        assert "she shares nothing more with you" in jane and "lab results" not in jane
        with family.client(family.ref("john_person")) as john:
            assert john.get(f"/{family.ref('obs_jane')}").status_code == 403


def test_mary_sees_her_father_and_the_day_she_comes_of_age(
    server: LiveServer, database_url: str, family: World
) -> None:
    coming = majority_on(born(family, "mary"), 18)
    assert coming is not None
    with signed_in(server, database_url, family.ref("mary")) as web:
        page = web.get(PAGE)
        assert page.status_code == 200
        own = re.search(r'<p id="own-coming-of-age">(.*?)</p>', page.text, re.S)
        assert own is not None
        assert f"On {day(coming)} you turn 18: your parents' full access" in text_of(own.group(1))
        assert "lab results and appointments" in text_of(own.group(1))
        father = row(page.text, "via", family.ref("rp_mary"))
        assert f"Your father sees your whole record until you turn 18 on {day(coming)}." in father
        assert 'id="act-for-none"' in page.text  # Mary acts for nobody
        # nothing of John's other family: not Tom, not Jane, not John's own record
        for other in ("tom", "jane", "john", "rp_tom", "rp_jane"):
            assert family.ref(other) not in page.text


def test_jane_sees_what_she_shares_with_john(
    server: LiveServer, database_url: str, family: World
) -> None:
    last = date.today() + timedelta(days=40)
    family.posted(jane_consent(family, "LAB_RESULTS", period={"end": last.isoformat()}))
    with signed_in(server, database_url, family.ref("jane")) as web:
        husband = row(web.get(PAGE).text, "via", family.ref("rp_jane"))
        assert (
            f"Your spouse sees your contact details; you share your lab results with them until "
            f"{day(last)}." in husband
        )


def test_a_stranger_sees_nobody(server: LiveServer, database_url: str, family: World) -> None:
    stranger = family.patient("Stranger", "1980-01-01")
    with signed_in(server, database_url, stranger) as web:
        page = web.get(PAGE)
        assert page.status_code == 200
        assert 'id="act-for-none"' in page.text and 'id="act-for-me-none"' in page.text
        assert 'id="own-coming-of-age"' not in page.text
        for name in ("mary", "tom", "jane", "john"):
            assert family.ref(name) not in page.text


def test_the_why_page_shows_the_rule_and_the_evidence(
    server: LiveServer, database_url: str, family: World
) -> None:
    consent = family.create(jane_consent(family, "LAB_RESULTS"))
    with signed_in(server, database_url, family.ref("john_person")) as web:
        page = web.get(PAGE).text
        link = re.search(
            rf'href="({WHY}\?patient={re.escape(family.ref("jane")).replace("/", "%2F")}[^"]+)"',
            page,
        )
        assert link is not None
        why = web.get(html.unescape(link.group(1)))
        assert why.status_code == 200
        text = text_of(why.text)
        assert "Why you see what you see of Jane" in text
        assert "Lab results: yes" in text and "Visits: no" in text
        assert "relatedperson_compartment" in text
        assert "consent_required" in text  # visits: no Consent opens them
        for evidence in (consent, family.ref("rp_jane"), family.ref("jane")):
            assert f'href="/fhir/{evidence}"' in why.text
        # Mary's row: the whole record as her father, and when it ends
        mary = web.get(WHY, params={"patient": family.ref("mary"), "via": family.ref("rp_mary")})
        assert mary.status_code == 200
        assert "Visits: yes" in text_of(mary.text) and "FTH" in text_of(mary.text)
    with signed_in(server, database_url, family.ref("mary")) as web:
        # the same pair seen from Mary's side: her father's access to her
        father = web.get(WHY, params={"patient": family.ref("mary"), "via": family.ref("rp_mary")})
        assert father.status_code == 200
        assert "Why your father sees what they see of you" in text_of(father.text)


def test_a_tampered_why_is_refused_audited_and_changes_nothing(
    server: LiveServer,
    database_url: str,
    family: World,
    make_world: Callable[..., World],
    db: psycopg.Connection[Any],
) -> None:
    others = make_world(people=False)
    make_family(others)
    with signed_in(server, database_url, family.ref("mary")) as web:
        before = snapshot(db)
        refused = [
            # another family's pair, which exists
            web.get(WHY, params={"patient": others.ref("mary"), "via": others.ref("rp_mary")}),
            # her father's link to her brother: a real pair, not hers
            web.get(WHY, params={"patient": family.ref("tom"), "via": family.ref("rp_tom")}),
            # a pair that does not exist at all, and nonsense
            web.get(WHY, params={"patient": "Patient/nope", "via": "RelatedPerson/nope"}),
            web.get(WHY),
        ]
        assert [r.status_code for r in refused] == [404] * 4
        # the same answer whether or not the pair exists, and nothing of it on the page
        assert len({text_of(r.text) for r in refused}) == 1
        for name in ("mary", "rp_mary", "tom", "rp_tom"):
            assert others.ref(name) not in refused[0].text
        assert snapshot(db) == before
    deadline = time.monotonic() + 10
    denial = None
    while denial is None and time.monotonic() < deadline:
        denial = db.execute(
            "SELECT content FROM audit_events WHERE true"
            " AND content->>'outcome' = '4' AND content::text LIKE %s LIMIT 1",
            (f"%why? of {others.ref('rp_mary')} for {others.ref('mary')}%",),
        ).fetchone()
        time.sleep(0.2)
    assert denial is not None, "the tampered why? was not audited"
    assert denial[0]["agent"][0]["who"]["reference"] == family.ref("mary")


def test_the_family_page_needs_a_sign_in(server: LiveServer) -> None:
    with browser(server.origin) as web:
        for path in (PAGE, f"{WHY}?patient=Patient/1&via=RelatedPerson/2"):
            away = web.get(path)
            assert away.status_code == 303 and away.headers["location"].startswith("/signin?")
