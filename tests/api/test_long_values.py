"""Long values in the search index (issue 11, finding 3).

A B-tree index row holds at most about 2,700 bytes. Every text the validator accepts must still be
stored and found again: the index holds the first 1,000 bytes of a long text and the whole text
beside it (storage/search_index.py). Each test writes values of 3 KB, 100 KB and several MB
through a single create, a transaction Bundle (the COPY path) or an update, and finds them by
exact match, prefix, `:contains`, `:below`/`:above` and sort, on the same server connection.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from fhir_server.settings import Settings
from fhir_server.storage.cursors import encode_cursor
from fhir_server.storage.database import Database, session_limits
from fhir_server.storage.search_index import KEY_BYTES
from tests.support import pooler
from tests.support.servers import LiveServer
from tests.support.tokens import auth, token

# Letters, an accented one (two bytes in UTF-8, normalized away for string search) and an emoji
# (four bytes), so that keys are cut between and inside multi-byte characters.
_ALPHABET = "abcdefghijklmnopqrstuvwxyzé😀"


def text(size: int, seed: int) -> str:
    """About `size` characters that do not compress (PostgreSQL compresses large index rows)."""
    return "".join(random.Random(seed).choices(_ALPHABET, k=size))


class Tagged:
    """Resources of one test, tagged, so that its searches see nothing else."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.code = uuid.uuid4().hex
        self.meta = {"tag": [{"system": "urn:test:long", "code": self.code}]}

    def create(self, resource: dict[str, Any]) -> str:
        response = self.client.post(
            f"/{resource['resourceType']}", json={**resource, "meta": self.meta}
        )
        assert response.status_code == 201, response.text[:500]
        id: str = response.json()["id"]
        return id

    def find(self, resource_type: str, **params: str) -> list[str]:
        """The ids a search finds, in order (by a form POST: the values are longer than a URL)."""
        form = {**params, "_tag": f"urn:test:long|{self.code}", "_count": "100"}
        response = self.client.post(f"/{resource_type}/_search", data=form)
        assert response.status_code == 200, response.text[:500]
        return [e["resource"]["id"] for e in response.json().get("entry", [])]


def still_serving(client: httpx.Client) -> None:
    """The server answers the next request on the same connection."""
    response = client.get("/metadata", params={"_summary": "true"})
    assert response.status_code == 200


SIZES = [3_000, 100_000, 3_000_000]


@pytest.mark.parametrize("size", SIZES)
def test_long_string_is_stored_and_found(
    client: httpx.Client, db: psycopg.Connection[tuple[object, ...]], size: int
) -> None:
    world = Tagged(client)
    family = text(size, seed=size)
    long_id = world.create({"resourceType": "Patient", "name": [{"family": family}]})
    # another name that shares the first 1,000 bytes and differs after
    twin = family[: size // 2] + "000" + family[size // 2 :]
    twin_id = world.create({"resourceType": "Patient", "name": [{"family": twin}]})
    # a name that is exactly what the index keeps of the long ones
    key = family.encode()[:KEY_BYTES].decode(errors="ignore")
    short_id = world.create({"resourceType": "Patient", "name": [{"family": key}]})

    assert world.find("Patient", **{"family:exact": family}) == [long_id]
    assert world.find("Patient", **{"family:exact": twin}) == [twin_id]
    assert world.find("Patient", **{"family:exact": key}) == [short_id]
    # prefix: the whole name, a long start of it, a short start
    assert world.find("Patient", family=family) == [long_id]
    assert world.find("Patient", family=family[: size // 2 + 1]) == [long_id]
    assert sorted(world.find("Patient", family=family[:20])) == sorted([long_id, twin_id, short_id])
    assert world.find("Patient", family=key + "x") == []
    # upper case and without accents, as string search normalizes
    assert world.find("Patient", family=family.upper().replace("É", "E")) == [long_id]
    # a piece beyond what the index keeps
    piece = family[size // 2 - 10 : size // 2 + 30]
    assert world.find("Patient", **{"family:contains": piece}) == [long_id]
    assert world.find(
        "Patient", **{"family:contains": "000" + family[size // 2 : size // 2 + 30]}
    ) == [twin_id]
    # sort: by the first 1,000 bytes, ties by id; every one comes, once
    ordered = world.find("Patient", _sort="family")
    assert ordered[0] == short_id  # a key sorts before any longer text it starts
    assert sorted(ordered) == sorted([long_id, twin_id, short_id])

    # the index row keeps the key, the whole text is beside it
    row = db.execute(
        "SELECT octet_length(value), value_full = lower(%s) FROM search_string"
        " WHERE resource_type = 'Patient' AND id = %s AND code = 'family'",
        (family.replace("é", "e"), long_id),
    ).fetchone()
    assert row is not None and row[0] <= KEY_BYTES and row[1] is True
    still_serving(client)


@pytest.mark.parametrize("size", SIZES)
def test_long_tokens_are_stored_and_found(client: httpx.Client, size: int) -> None:
    world = Tagged(client)
    value, system = text(size, seed=1), "urn:x:" + text(size, seed=2)
    key_value = value.encode()[:KEY_BYTES].decode(errors="ignore")
    long_id = world.create(
        {"resourceType": "Patient", "identifier": [{"system": system, "value": value}]}
    )
    short_id = world.create(
        {"resourceType": "Patient", "identifier": [{"system": "urn:x:short", "value": key_value}]}
    )
    display_id = world.create(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": system, "code": value, "display": value}]},
        }
    )
    assert world.find("Patient", identifier=value) == [long_id]
    assert world.find("Patient", identifier=f"{system}|{value}") == [long_id]
    assert world.find("Patient", identifier=f"{system}|") == [long_id]
    assert world.find("Patient", identifier=key_value) == [short_id]
    assert world.find("Patient", identifier=f"{system}|{key_value}") == []
    assert world.find("Patient", identifier=value + "x") == []
    assert world.find("Observation", code=f"{system}|{value}") == [display_id]
    assert world.find("Observation", **{"code:text": value[:5000]}) == [display_id]
    assert world.find("Patient", _sort="identifier") == [short_id, long_id]
    # composite: a long code and a long string value together
    composite_id = world.create(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": system, "code": value}]},
            "valueString": value,
        }
    )
    found = world.find("Observation", **{"code-value-string": f"{system}|{value}${value}"})
    assert found == [composite_id]
    assert world.find("Observation", **{"code-value-string": f"{system}|{value}$x{value}"}) == []
    still_serving(client)


@pytest.mark.parametrize("size", SIZES)
def test_long_uris_are_stored_and_found(client: httpx.Client, size: int) -> None:
    world = Tagged(client)
    url = "http://example.org/" + text(size, seed=3).replace("😀", "/")
    long_id = world.create({"resourceType": "ValueSet", "status": "draft", "url": url})
    below = url[: len(url) // 2]
    below_id = world.create({"resourceType": "ValueSet", "status": "draft", "url": below})
    assert world.find("ValueSet", url=url) == [long_id]
    assert world.find("ValueSet", url=below) == [below_id]
    assert sorted(world.find("ValueSet", **{"url:below": below})) == sorted([long_id, below_id])
    assert world.find("ValueSet", **{"url:below": url}) == [long_id]
    assert sorted(world.find("ValueSet", **{"url:above": url + "/more"})) == sorted(
        [long_id, below_id]
    )
    assert world.find("ValueSet", **{"url:above": below}) == [below_id]
    still_serving(client)


@pytest.mark.parametrize("size", SIZES)
def test_long_quantity_units_and_reference_ids_are_stored_and_found(
    client: httpx.Client, size: int
) -> None:
    world = Tagged(client)
    system, code = "urn:u:" + text(size, seed=4), text(size, seed=5)
    reference = "Patient/" + text(size, seed=6).replace("😀", "-").replace("é", "e")
    id = world.create(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "weight"},
            "subject": {"reference": reference},
            "valueQuantity": {"value": 5.4, "system": system, "code": code, "unit": code},
        }
    )
    assert world.find("Observation", **{"value-quantity": f"5.4|{system}|{code}"}) == [id]
    assert world.find("Observation", **{"value-quantity": f"5.4||{code}"}) == [id]
    assert world.find("Observation", **{"value-quantity": f"5.4|{system}|x"}) == []
    # an id longer than an R4 id names no resource here: the reference is found by its text
    assert world.find("Observation", subject=reference) == [id]
    assert world.find("Observation", **{"subject:Patient": reference[len("Patient/") :]}) == [id]
    still_serving(client)


def test_long_values_through_a_transaction_and_an_update(client: httpx.Client) -> None:
    world = Tagged(client)
    values = {size: text(size, seed=10 + size) for size in SIZES}
    entries = [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": {
                "resourceType": "Patient",
                "meta": world.meta,
                "name": [{"family": family}],
                "identifier": [{"system": "urn:long", "value": family}],
            },
            "request": {"method": "POST", "url": "Patient"},
        }
        for family in values.values()
    ]
    response = client.post(
        "", json={"resourceType": "Bundle", "type": "transaction", "entry": entries}
    )
    assert response.status_code == 200, response.text[:500]
    ids = {
        size: entry["response"]["location"].split("/")[1]
        for size, entry in zip(values, response.json()["entry"], strict=True)
    }
    for size, family in values.items():
        assert world.find("Patient", **{"family:exact": family}) == [ids[size]]
        assert world.find("Patient", family=family[:2000]) == [ids[size]]
        assert world.find("Patient", identifier=f"urn:long|{family}") == [ids[size]]

    # an update replaces the long values by other long ones
    id = ids[100_000]
    new_family = text(100_000, seed=99)
    response = client.put(
        f"/Patient/{id}",
        json={
            "resourceType": "Patient",
            "id": id,
            "meta": world.meta,
            "name": [{"family": new_family}],
            "identifier": [{"system": "urn:long", "value": new_family}],
        },
    )
    assert response.status_code == 200, response.text[:500]
    assert world.find("Patient", **{"family:exact": new_family}) == [id]
    assert world.find("Patient", identifier=f"urn:long|{new_family}") == [id]
    assert world.find("Patient", **{"family:exact": values[100_000]}) == []
    assert world.find("Patient", identifier=f"urn:long|{values[100_000]}") == []
    still_serving(client)


def test_numbers_with_many_digits(client: httpx.Client) -> None:
    """A decimal of 5,000 digits (R4 sets no limit): stored as sent, indexed at 1,000 digits."""
    world = Tagged(client)
    number = "123." + "".join(random.Random(7).choices("0123456789", k=5000)) + "1"
    body = (
        '{"resourceType": "Observation", "status": "final", "code": {"text": "x"},'
        f' "meta": {{"tag": [{{"system": "urn:test:long", "code": "{world.code}"}}]}},'
        f' "valueQuantity": {{"value": {number}}}}}'
    )
    response = client.post(
        "/Observation", content=body, headers={"Content-Type": "application/fhir+json"}
    )
    assert response.status_code == 201, response.text[:500]
    id = response.json()["id"]
    assert number in client.get(f"/Observation/{id}").text
    assert world.find("Observation", **{"value-quantity": "gt123"}) == [id]
    assert world.find("Observation", **{"value-quantity": "123.5"}) == []
    assert world.find("Observation", **{"value-quantity": "lt124"}) == [id]
    # a search number beyond what the index compares is refused, naming it
    response = client.post(
        "/Observation/_search", data={"value-quantity": f"gt{number}", "_tag": world.code}
    )
    assert response.status_code == 400
    assert "significant digits" in response.json()["issue"][0]["diagnostics"]
    still_serving(client)


def test_a_fhir_user_with_a_long_id_is_refused(client: httpx.Client) -> None:
    long_user = "Patient/" + "a" * 3000
    response = client.get(
        "/Patient", headers={"Authorization": f"Bearer {token(long_user, 'patient/*.rs')}"}
    )
    assert response.status_code == 401
    assert "fhirUser" in response.json()["issue"][0]["diagnostics"]
    still_serving(client)


@pytest.mark.parametrize("descending", [False, True])
def test_sorting_long_texts_pages_through_the_whole_values(
    client: httpx.Client, descending: bool
) -> None:
    """Names that agree on their first 1,000 bytes sort by the rest of their text, and a page's
    next link stays short: it carries no text longer than a key."""
    world = Tagged(client)
    start = text(2_000, seed=8)
    endings = ["m", "b", "", "x" + text(50_000, seed=9), "a", "bb"]
    created = {
        world.create({"resourceType": "Patient", "name": [{"family": start + e}]}): start + e
        for e in endings
    }
    short = world.create({"resourceType": "Patient", "name": [{"family": "a"}]})
    created[short] = "a"
    expected = sorted(created, key=lambda id: created[id], reverse=descending)

    url: str | None = "/Patient"
    params: dict[str, str] | None = {
        "_sort": "-family" if descending else "family",
        "_count": "1",
        "_tag": f"urn:test:long|{world.code}",
    }
    seen: list[str] = []
    while url is not None:
        response = client.get(url, params=params)
        assert response.status_code == 200, response.text[:500]
        body = response.json()
        seen += [e["resource"]["id"] for e in body.get("entry", [])]
        links = {link["relation"]: link["url"] for link in body["link"]}
        url, params = links.get("next"), None
        assert url is None or len(url) < 4_000
    assert seen == expected
    still_serving(client)


# --- what one request may make the server and the database hold -------------------------------


@pytest.fixture(scope="module")
def small_budget(database_url: str) -> Iterator[httpx.Client]:
    """A server whose search pages hold at most 10,000 bytes of JSON."""
    with (
        LiveServer(Settings(max_search_bytes=10_000), database_url) as server,
        httpx.Client(base_url=f"{server.origin}/fhir", timeout=30, headers=auth()) as client,
    ):
        yield client


def test_a_search_page_holds_at_most_the_budget(small_budget: httpx.Client) -> None:
    world = Tagged(small_budget)
    ids = [
        world.create({"resourceType": "Patient", "name": [{"family": f"{n}" + "x" * 3_000}]})
        for n in range(7)
    ]
    big = world.create({"resourceType": "Patient", "name": [{"family": "9" + "y" * 30_000}]})
    url: str | None = "/Patient"
    params: dict[str, str] | None = {
        "_sort": "family",
        "_count": "20",
        "_tag": f"urn:test:long|{world.code}",
    }
    pages: list[list[str]] = []
    while url is not None:
        body = small_budget.get(url, params=params).json()
        pages.append([e["resource"]["id"] for e in body.get("entry", [])])
        url, params = {link["relation"]: link["url"] for link in body["link"]}.get("next"), None
    # three resources of 3 kB fit in 10,000 bytes; one of 30 kB comes alone, on its own page
    assert [len(page) for page in pages] == [3, 3, 1, 1]
    assert [id for page in pages for id in page] == [*ids, big]


def test_included_resources_stay_within_the_budget(small_budget: httpx.Client) -> None:
    world = Tagged(small_budget)
    patients = [
        world.create({"resourceType": "Patient", "name": [{"family": "x" * 4_000}]})
        for _ in range(4)
    ]
    for patient in patients:
        world.create(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": f"Patient/{patient}"},
            }
        )
    body = small_budget.get(
        "/Observation",
        params={"_include": "Observation:subject", "_tag": f"urn:test:long|{world.code}"},
    ).json()
    modes = [e["search"]["mode"] for e in body["entry"]]
    assert modes.count("match") == 4
    assert 0 < modes.count("include") < 4  # 4 kB each: two fit beside the matches


def test_database_sessions_carry_the_limits(database_url: str) -> None:
    async def check() -> tuple[list[str], type[BaseException] | None]:
        db = Database(database_url, pool_size=1, limits=session_limits("150ms", "3MB", "7s"))
        await db.open()
        try:
            async with db.connection() as conn:
                shown = []
                for name in (
                    "statement_timeout",
                    "work_mem",
                    "idle_in_transaction_session_timeout",
                ):
                    row = await (await conn.execute(f"SHOW {name}")).fetchone()
                    assert row is not None
                    shown.append(str(row[0]))
                try:
                    await conn.execute("SELECT pg_sleep(2)")
                except psycopg.errors.QueryCanceled as exc:
                    return shown, type(exc)
                return shown, None
        finally:
            await db.close()

    shown, error = asyncio.run(check())
    assert shown == ["150ms", "3MB", "7s"]
    assert error is psycopg.errors.QueryCanceled


def test_a_statement_over_the_timeout_is_a_503_and_changes_nothing(
    database_url: str, db: psycopg.Connection[tuple[object, ...]]
) -> None:
    if pooler.ACTIVE is not None:
        # behind a transaction pooler the limits are the pooler's (connect_query), not the
        # server's settings (docs/scaling.md#a-connection-pooler): test_pooler.py covers that
        pytest.skip("the session limits come from the pooler here")
    settings = Settings(db_statement_timeout="1ms")
    family = text(3_000_000, seed=11)
    # (the audit trail records the attempt: its events are left out)
    counted = (
        "SELECT (SELECT count(*) FROM resources WHERE resource_type <> 'AuditEvent'),"
        " (SELECT count(*) FROM resource_history WHERE resource_type <> 'AuditEvent'),"
        " (SELECT count(*) FROM search_string WHERE resource_type <> 'AuditEvent')"
    )
    before = db.execute(counted).fetchone()
    with (
        LiveServer(settings, database_url) as server,
        httpx.Client(base_url=f"{server.origin}/fhir", timeout=30, headers=auth()) as client,
    ):
        response = client.post(
            "/Patient", json={"resourceType": "Patient", "name": [{"family": family}]}
        )
        assert response.status_code == 503, response.text[:300]
        issue = response.json()["issue"][0]
        assert issue["code"] == "too-costly"
        # the connection stays open and answers
        assert client.get("/metadata", params={"_summary": "true"}).status_code == 200
    assert db.execute(counted).fetchone() == before


def test_database_limits_are_checked_when_the_server_starts() -> None:
    with pytest.raises(ValueError, match="FHIR_DB_WORK_MEM"):
        Settings.from_env({"FHIR_DB_WORK_MEM": "8MB -c statement_timeout=0"})
    assert Settings.from_env({"FHIR_DB_STATEMENT_TIMEOUT": "5min"}).db_statement_timeout == "5min"


def test_a_history_page_holds_at_most_the_budget(small_budget: httpx.Client) -> None:
    world = Tagged(small_budget)
    id = world.create({"resourceType": "Patient", "name": [{"family": "a" * 4_000}]})
    for family in ("b" * 4_000, "c" * 4_000):
        body = {
            "resourceType": "Patient",
            "id": id,
            "meta": world.meta,
            "name": [{"family": family}],
        }
        assert small_budget.put(f"/Patient/{id}", json=body).status_code == 200
    url: str | None = f"/Patient/{id}/_history"
    pages: list[list[str]] = []
    while url is not None:
        body = small_budget.get(url).json()
        pages.append([e["resource"]["name"][0]["family"][0] for e in body.get("entry", [])])
        url = {link["relation"]: link["url"] for link in body["link"]}.get("next")
    # two versions of 4 kB fit in 10,000 bytes, newest first
    assert pages == [["c", "b"], ["a"]]


def test_a_cursor_cannot_read_the_values_of_a_hidden_resource(
    client: httpx.Client, live_server: LiveServer
) -> None:
    """A next link carries no text longer than a key; the next page looks up the whole text of
    the page's last resource. A cursor is the client's to change: pointing it at a resource the
    caller may not see must tell nothing of that resource's values."""
    world = Tagged(client)
    mine = world.create({"resourceType": "Patient"})
    theirs = world.create({"resourceType": "Patient"})
    start = text(1_500, seed=12).replace("😀", "x").replace("é", "e")

    def observation(patient: str, ending: str) -> str:
        return world.create(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "urn:long", "code": start + ending}]},
                "subject": {"reference": f"Patient/{patient}"},
            }
        )

    first, last = observation(mine, "b"), observation(mine, "d")
    hidden = observation(theirs, "c")
    key = start.encode()[:KEY_BYTES].decode()

    def page_after(resource_id: str) -> list[str]:
        cursor = encode_cursor((key, None, "Observation", resource_id))
        response = caller.get(
            "/Observation",
            params={"_sort": "code", "_tag": f"urn:test:long|{world.code}", "_page": cursor},
        )
        assert response.status_code == 200, response.text[:300]
        return [e["resource"]["id"] for e in response.json().get("entry", [])]

    with httpx.Client(
        base_url=f"{live_server.origin}/fhir",
        timeout=30,
        headers=auth(f"Patient/{mine}", "user/*.rs"),
    ) as caller:
        assert page_after(first) == [last]  # the lookup works for what the caller sees
        # the hidden resource's text (between the two) would give [last]: it answers as an
        # unknown id does
        assert page_after(hidden) == page_after(str(uuid.uuid4())) == []
