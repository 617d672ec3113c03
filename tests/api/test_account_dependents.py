"""`/account/dependents` on a real server and PostgreSQL, driven like a browser (cookies kept,
forms read from the HTML and posted back): Jane (Patient/jane of the seed family) adds a child,
sees each rule's refusal in plain words with what she typed kept and nothing written, and
removes a dependent through the coverage confirmation. Each step is checked on the page and in
the FHIR resources the family workflow writes (docs/account-dependents.md)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from fhir_server.web import acting
from tests.support import resources
from tests.support.authorize import add_user, browser, form, sign_in
from tests.support.resources import years_ago
from tests.support.servers import LiveServer
from tests.support.world import World, snapshot

PAGE = "/account/dependents"
FAMILY_SYSTEM = "urn:fhir-server:family-relationship"
PRIMARY_EXTENSION = "urn:fhir-server:StructureDefinition/family-primary"


@pytest.fixture
def jane(server: LiveServer, world: World, database_url: str) -> Iterator[httpx.Client]:
    """A browser signed in as Jane (her own Patient)."""
    username = add_user(database_url, world.ref("jane"))
    with browser(server.origin) as web:
        assert sign_in(web, PAGE, username).status_code == 303
        yield web


def post_form(
    web: httpx.Client, page: httpx.Response, action: str, **values: str
) -> httpx.Response:
    """Fill in the form of `page` that posts to `action` (its hidden fields kept) and send it."""
    hidden = form(page.text, action).hidden()
    return web.post(action, data={**hidden, **values})


def add(web: httpx.Client, **values: str) -> httpx.Response:
    fields = dict.fromkeys(
        ("relationship", "national_id", "given", "family", "birth_date", "gender"), ""
    )
    return post_form(web, web.get(PAGE), PAGE, **{**fields, **values})


def search(world: World, query: str) -> list[dict[str, Any]]:
    found = world.system.get(query)
    assert found.status_code == 200, found.text
    return [e["resource"] for e in found.json().get("entry", [])]


def links_to(world: World, patient: str) -> list[dict[str, Any]]:
    """The family workflow's RelatedPersons towards `patient`."""
    return [
        rp
        for rp in search(world, f"/RelatedPerson?patient={patient}")
        if any(e.get("url") == PRIMARY_EXTENSION for e in rp.get("extension", []))
    ]


def test_the_page_needs_a_sign_in(server: LiveServer) -> None:
    with browser(server.origin) as web:
        away = web.get(PAGE)
        assert away.status_code == 303 and away.headers["location"].startswith("/signin?next=")
        assert web.post(PAGE, data={"relationship": "CHILD"}).status_code == 303


def test_jane_adds_a_child_by_demographics_and_the_api_shows_the_links(
    jane: httpx.Client, world: World
) -> None:
    empty = jane.get(PAGE)
    assert empty.status_code == 200
    assert "Add a dependent" in empty.text
    labelled = form(empty.text, PAGE).inputs
    assert all(i.label for i in labelled if i.type in {"text", "date"})
    family = f"Doe{world.tag}"
    done = add(
        jane,
        relationship="CHILD",
        given="Lucy",
        family=family,
        birth_date=years_ago(3),
        gender="female",
    )
    assert done.status_code == 303 and done.headers["location"] == f"{PAGE}?added=1"
    page = jane.get(done.headers["location"])
    assert "The dependent was added." in page.text
    assert f"Lucy {family}" in page.text and "Your child" in page.text and "a minor" in page.text
    assert "You can see their health record." in page.text

    (lucy,) = search(world, f"/Patient?given:exact=Lucy&family:exact={family}")
    kid = f"Patient/{lucy['id']}"
    assert lucy["birthDate"] == years_ago(3) and lucy["gender"] == "female"
    (link,) = links_to(world, kid)
    assert link["active"] is True
    assert {"system": FAMILY_SYSTEM, "code": "CHILD"} in [
        c for r in link["relationship"] for c in r["coding"]
    ]
    assert link["extension"][0]["valueReference"]["reference"] == world.ref("jane")
    persons = search(world, f"/Person?link={world.ref('jane')}")
    assert any(
        {"target": {"reference": f"RelatedPerson/{link['id']}"}, "assurance": "level3"} in p["link"]
        for p in persons
    )
    # the engine now lets Jane's own token read her new child's record
    with world.client(world.ref("jane")) as as_jane:
        assert as_jane.get(f"/{kid}").status_code == 200


@pytest.mark.parametrize(
    ("values", "words", "code"),
    [
        (
            {"relationship": "CHILD", "given": "Old", "birth_date": years_ago(60)},
            "first name, last name and birth date",
            "details-needed",
        ),
        (
            {"relationship": "CHILD", "given": "Old", "family": "Doe", "birth_date": years_ago(60)},
            "A child must be younger than you.",
            "child-younger",
        ),
        (
            {
                "relationship": "PARENT",
                "given": "Young",
                "family": "Doe",
                "birth_date": years_ago(5),
            },
            "A parent must be older than you.",
            "parent-older",
        ),
        (
            {
                "relationship": "SPOUSE",
                "given": "Kid",
                "family": "Doe",
                "birth_date": years_ago(15),
            },
            "Both spouses must be adults (18 or older)",
            "spouse-age",
        ),
        (
            {"relationship": "CHILD", "national_id": "nobody-at-all"},
            "Nobody with this national id",
            "dependent-unknown",
        ),
        (
            {"relationship": "", "given": "Ann", "family": "Doe", "birth_date": years_ago(2)},
            "Choose how the person is related to you.",
            "relationship",
        ),
        (
            {"relationship": "CHILD", "given": "Ann", "family": "Doe", "birth_date": "02/03/2020"},
            "Give the birth date as a date",
            "birth-date",
        ),
        (
            {"relationship": "CHILD", "given": "Ann", "family": "Doe", "birth_date": "2020-02-30"},
            "Give the birth date as a date",
            "birth-date",
        ),
    ],
)
def test_each_refusal_is_shown_in_plain_words_with_the_input_kept_and_nothing_written(
    jane: httpx.Client, database_url: str, values: dict[str, str], words: str, code: str
) -> None:
    with psycopg.connect(database_url) as db:
        before = snapshot(db)
    answer = add(jane, **values)
    assert answer.status_code in {400, 422}, answer.text
    assert words in answer.text and f"Reason code: {code}" in answer.text
    assert 'role="alert"' in answer.text
    kept = {i.name: i.value for i in form(answer.text, PAGE).inputs if i.type in {"text", "date"}}
    for name in ("given", "family", "birth_date", "national_id"):
        assert kept[name] == values.get(name, "")
    if values["relationship"]:
        assert f'value="{values["relationship"]}" selected' in answer.text
    with psycopg.connect(database_url) as db:
        assert snapshot(db) == before


def test_an_existing_patient_by_national_id_once_then_already_a_dependent(
    jane: httpx.Client, world: World, database_url: str
) -> None:
    nid = world.nid("ward")
    ward = world.patient("Ward", years_ago(10), national=nid)
    assert add(jane, relationship="GUARDIAN", national_id=nid).status_code == 303
    (link,) = links_to(world, ward)
    persons = search(world, f"/Person?link={world.ref('jane')}")
    # someone already on record: the link waits for verification (family.py)
    assert any(
        {"target": {"reference": f"RelatedPerson/{link['id']}"}, "assurance": "level2"} in p["link"]
        for p in persons
    )
    with psycopg.connect(database_url) as db:
        before = snapshot(db)
    again = add(jane, relationship="GUARDIAN", national_id=nid)
    assert again.status_code == 422
    assert "This person is already one of your dependents." in again.text
    with psycopg.connect(database_url) as db:
        assert snapshot(db) == before


def test_a_form_without_its_csrf_token_changes_nothing(
    jane: httpx.Client, world: World, database_url: str
) -> None:
    with psycopg.connect(database_url) as db:
        before = snapshot(db)
    data = {"relationship": "CHILD", "given": "Forged", "family": "Doe", "birth_date": years_ago(1)}
    answer = jane.post(PAGE, data=data)
    assert answer.status_code == 403 and "CSRF" in answer.text
    forged = jane.post(PAGE, data={**data, "csrf_token": "forged"})
    assert forged.status_code == 403
    with psycopg.connect(database_url) as db:
        assert snapshot(db) == before


def test_removing_a_covered_dependent_asks_to_confirm_and_ends_the_coverage(
    jane: httpx.Client, world: World
) -> None:
    family = f"Doe{world.tag}"
    assert (
        add(
            jane, relationship="CHILD", given="Max", family=family, birth_date=years_ago(4)
        ).status_code
        == 303
    )
    (max_,) = search(world, f"/Patient?given:exact=Max&family:exact={family}")
    kid = f"Patient/{max_['id']}"
    # Jane's own scheme (she subscribes): what a removal ends (docs/family.md)
    mine = {"subscriber": {"reference": world.ref("jane")}}
    cover = world.posted(resources.coverage(kid, "NHIF", subscriberId="NHIF-777", **mine))
    listing = jane.get(PAGE)
    assert "NHIF" in listing.text
    confirm = jane.get(f"{PAGE}/remove", params={"dependent": kid})
    assert confirm.status_code == 200
    assert f"Remove Max {family}?" in confirm.text
    assert "Removing them also ends this coverage" in confirm.text and "NHIF-777" in confirm.text
    assert form(confirm.text, f"{PAGE}/remove").hidden()["confirm"] == "yes"
    # nothing happens until the confirmation is posted
    (link,) = links_to(world, kid)
    assert link["active"] is True
    done = post_form(jane, confirm, f"{PAGE}/remove")
    assert done.status_code == 303 and done.headers["location"] == f"{PAGE}?removed=1"
    ended = world.system.get(f"/RelatedPerson/{link['id']}").json()
    assert ended["active"] is False and ended["period"]["end"]
    assert world.system.get(f"/Coverage/{cover['id']}").json()["status"] == "cancelled"
    after = jane.get(done.headers["location"])
    assert "The dependent was removed." in after.text and f"Max {family}" not in after.text


def test_removal_without_coverage_and_without_confirm_still_refuses_covered_ones(
    jane: httpx.Client, world: World, database_url: str
) -> None:
    family = f"Doe{world.tag}"
    assert (
        add(
            jane, relationship="CHILD", given="Zoe", family=family, birth_date=years_ago(6)
        ).status_code
        == 303
    )
    (zoe,) = search(world, f"/Patient?given:exact=Zoe&family:exact={family}")
    kid = f"Patient/{zoe['id']}"
    confirm = jane.get(f"{PAGE}/remove", params={"dependent": kid})
    assert "confirm" not in form(confirm.text, f"{PAGE}/remove").hidden()
    # coverage added after the page was shown: the removal is not confirmed for it
    mine = {"subscriber": {"reference": world.ref("jane")}}
    cover = world.posted(resources.coverage(kid, "Private Co", **mine))
    with psycopg.connect(database_url) as db:
        before = snapshot(db)
    again = post_form(jane, confirm, f"{PAGE}/remove")
    assert again.status_code == 200 and "Private Co" in again.text
    with psycopg.connect(database_url) as db:
        assert snapshot(db) == before
    assert world.system.get(f"/Coverage/{cover['id']}").json()["status"] == "active"


def test_someone_who_is_not_her_dependent_cannot_be_removed(
    jane: httpx.Client, world: World, database_url: str
) -> None:
    mary = world.ref("mary")
    assert jane.get(f"{PAGE}/remove", params={"dependent": mary}).status_code == 404
    page = jane.get(PAGE)
    token = form(page.text, PAGE).hidden()["csrf_token"]
    with psycopg.connect(database_url) as db:
        before = snapshot(db)
    answer = jane.post(
        f"{PAGE}/remove", data={"csrf_token": token, "dependent": mary, "confirm": "yes"}
    )
    assert answer.status_code == 404
    with psycopg.connect(database_url) as db:
        assert snapshot(db) == before


def test_a_person_account_manages_the_dependents_of_its_patient(
    server: LiveServer, world: World, database_url: str
) -> None:
    """John signs in as his Person (level4 link to Patient/john): the page acts for John."""
    john = add_user(database_url, world.ref("john_person"))
    with browser(server.origin) as web:
        assert sign_in(web, PAGE, john).status_code == 303
        family = f"Doe{world.tag}"
        done = add(web, relationship="CHILD", given="Ben", family=family, birth_date=years_ago(1))
        assert done.status_code == 303, done.text
        assert f"Ben {family}" in web.get(PAGE).text
    (ben,) = search(world, f"/Patient?given:exact=Ben&family:exact={family}")
    (link,) = links_to(world, f"Patient/{ben['id']}")
    assert link["extension"][0]["valueReference"]["reference"] == world.ref("john")


def test_changes_beyond_the_rate_limit_are_refused_and_write_nothing(
    server: LiveServer, world: World, database_url: str
) -> None:
    username = add_user(database_url, world.ref("jane"))
    with browser(server.origin) as web:
        assert sign_in(web, PAGE, username).status_code == 303
        token = form(web.get(PAGE).text, PAGE).hidden()["csrf_token"]
        refused = {"csrf_token": token, "relationship": ""}  # refused by the form: no write
        for _ in range(acting.CHANGES_PER_MINUTE):
            assert web.post(PAGE, data=refused).status_code == 422
        with psycopg.connect(database_url) as db:
            before = snapshot(db)
        data = {
            "csrf_token": token,
            "relationship": "CHILD",
            "given": "Late",
            "family": "Doe",
            "birth_date": years_ago(1),
        }
        answer = web.post(PAGE, data=data)
        assert answer.status_code == 429
        with psycopg.connect(database_url) as db:
            assert snapshot(db) == before
