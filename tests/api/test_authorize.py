"""The authorization endpoint, the sign-in page, the "whose record?" picker and the approval
page, on a real server (issuer and audience = its own /fhir) and a real PostgreSQL, driven like a
browser: cookies kept, forms read from the HTML and posted back (docs/smart-authorize.md).

The negative tests are one request each, after the steps that lead to it; those that are refused
prove that nothing was written (no code, no approval, no session)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from fhir_server.settings import Settings
from fhir_server.storage import oauth
from tests.support.authorize import (
    PASSWORD,
    REDIRECT,
    add_client,
    add_user,
    authorize_params,
    authorize_url,
    browser,
    form,
    query_of,
    run,
    sign_in,
)
from tests.support.oauth import pkce
from tests.support.servers import LiveServer
from tests.support.world import World, jane_consent

LOCKOUT_ATTEMPTS = 3
Family = dict[str, str]


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[LiveServer]:
    settings = replace(Settings(), oauth_lockout_attempts=LOCKOUT_ATTEMPTS)
    with LiveServer(settings, database_url, fixed_base=True) as live:
        yield live


@pytest.fixture(scope="module")
def aud(server: LiveServer) -> str:
    return f"{server.origin}/fhir"


@pytest.fixture(scope="module")
def john(world: World, database_url: str) -> str:
    """John's account (his Person: himself, father of Mary and Tom, husband of Jane)."""
    return add_user(database_url, world.ref("john_person"))


@pytest.fixture
def client(database_url: str) -> oauth.Client:
    return add_client(database_url)


@pytest.fixture
def web(server: LiveServer) -> Iterator[httpx.Client]:
    with browser(server.origin) as made:
        yield made


def code_row(database_url: str, code: str) -> dict[str, Any] | None:
    with psycopg.connect(database_url) as db:
        cursor = db.execute(
            "SELECT client_id, redirect_uri, scope, subject, fhir_user, patient, encounter,"
            " code_challenge, code_challenge_method, claims, expires_at - auth_time > interval '0'"
            " FROM oauth_codes WHERE code_hash = %s",
            (oauth.digest(code),),
        )
        row = cursor.fetchone()
        if row is None:
            return None
        names = [d.name for d in cursor.description or ()]
        return dict(zip(names, row, strict=True))


def count(database_url: str, sql: str, *params: Any) -> int:
    with psycopg.connect(database_url) as db:
        row = db.execute(sql, params).fetchone()
        assert row is not None
        return int(row[0])


def codes_of(database_url: str, client: oauth.Client) -> int:
    return count(
        database_url, "SELECT count(*) FROM oauth_codes WHERE client_id = %s", client.client_id
    )


def approvals_of(database_url: str, client: oauth.Client) -> int:
    return count(
        database_url, "SELECT count(*) FROM oauth_approvals WHERE client_id = %s", client.client_id
    )


def refusals(database_url: str, account: str, event: str) -> list[str]:
    """The outcome descriptions of the refused security events of `account`."""
    with psycopg.connect(database_url) as db:
        rows = db.execute(
            "SELECT content->>'outcomeDesc' FROM audit_events WHERE true"
            " AND coalesce(content->'agent'->0->'who'->>'reference',"
            " content->'agent'->0->'who'->'identifier'->>'value') = %s"
            " AND content->'subtype'->0->>'code' = %s AND content->>'outcome' <> '0'",
            (account, event),
        ).fetchall()
    return [r[0] for r in rows]


def signed_in_at_picker(web: httpx.Client, params: dict[str, str], username: str) -> httpx.Response:
    """Authorize, get sent to the sign-in page, sign in, land on the picker."""
    start = web.get(authorize_url(params))
    assert start.status_code == 303, start.text
    assert start.headers["location"].startswith("/signin?next=")
    next_path = query_of(start.headers["location"])["next"]
    signed = sign_in(web, next_path, username)
    assert signed.status_code == 303, signed.text
    assert signed.headers["location"] == next_path
    picker = web.get(next_path)
    assert picker.status_code == 200, picker.text
    return picker


def pick(web: httpx.Client, picker: httpx.Response, patient: str) -> httpx.Response:
    chosen = form(picker.text, "/oauth/authorize")
    assert patient in [o.value for o in chosen.options("patient")]
    return web.post("/oauth/authorize", data={**chosen.hidden(), "patient": patient})


def approve(
    web: httpx.Client, page: httpx.Response, untick: tuple[str, ...] = ()
) -> httpx.Response:
    approval = form(page.text, "/oauth/authorize")
    ticked = [o.value for o in approval.options("scope") if o.checked and o.value not in untick]
    data: dict[str, Any] = {**approval.hidden(), "scope": ticked, "decision": "approve"}
    return web.post("/oauth/authorize", data=data)


# --- the happy path ----------------------------------------------------------------------------


def test_john_picks_mary_approves_and_the_app_gets_a_code_for_her(
    web: httpx.Client, client: oauth.Client, aud: str, world: World, john: str, database_url: str
) -> None:
    params = authorize_params(client, aud)
    picker = signed_in_at_picker(web, params, john)
    options = form(picker.text, "/oauth/authorize").options("patient")
    assert [o.value for o in options] == [
        world.ref("john"),
        world.ref("mary"),
        world.ref("tom"),
        world.ref("jane"),
    ] or sorted(o.value for o in options) == sorted(
        world.ref(n) for n in ("john", "mary", "tom", "jane")
    )
    labels = {o.value: o.label for o in options}
    assert "Mary" in labels[world.ref("mary")] and "age 12" in labels[world.ref("mary")]
    assert "father" in labels[world.ref("mary")] and "whole record" in labels[world.ref("mary")]
    assert "Tom" in labels[world.ref("tom")] and "age 8" in labels[world.ref("tom")]
    assert "spouse" in labels[world.ref("jane")]
    assert "Your own record" in labels[world.ref("john")]
    assert "form-action 'self' https://app.example" in picker.headers["content-security-policy"]

    approval = pick(web, picker, world.ref("mary"))
    assert approval.status_code == 200, approval.text
    assert "Growth Chart" in approval.text and "Mary" in approval.text
    assert "Read and search all kinds of records of Mary" in approval.text
    done = approve(web, approval)
    assert done.status_code == 303, done.text
    location = done.headers["location"]
    assert location.startswith(REDIRECT + "?")
    answer = query_of(location)
    assert answer["state"] == params["state"]
    row = code_row(database_url, answer["code"])
    assert row is not None
    assert row["client_id"] == client.client_id and row["redirect_uri"] == REDIRECT
    assert row["patient"] == world.ref("mary").split("/", 1)[1]
    assert row["fhir_user"] == world.ref("rp_mary")  # John as Mary's father
    assert row["subject"] == f"local:{john}"
    assert set(row["scope"].split()) == {"launch/patient", "openid", "fhirUser", "patient/*.rs"}
    assert row["code_challenge"] == params["code_challenge"]
    assert row["code_challenge_method"] == "S256"
    assert row["claims"]["access_basis"]["relationship"] == world.ref("rp_mary")
    assert len(answer["code"]) >= 43  # 256 bits


def test_an_approval_is_remembered_for_that_person_and_no_more_scope(
    web: httpx.Client, client: oauth.Client, aud: str, world: World, john: str, database_url: str
) -> None:
    picker = signed_in_at_picker(web, authorize_params(client, aud), john)
    assert approve(web, pick(web, picker, world.ref("tom"))).status_code == 303
    # the same request again: the picker, then straight back to the app
    again = web.get(authorize_url(authorize_params(client, aud)))
    direct = pick(web, again, world.ref("tom"))
    assert direct.status_code == 303 and "code" in query_of(direct.headers["location"])
    # another person, or more scope: the approval page again
    other = pick(web, web.get(authorize_url(authorize_params(client, aud))), world.ref("mary"))
    assert other.status_code == 200 and "Allow" in other.text
    more = authorize_params(
        client, aud, scope="launch/patient openid fhirUser patient/*.rs offline_access"
    )
    asked_more = pick(web, web.get(authorize_url(more)), world.ref("tom"))
    assert (
        asked_more.status_code == 200
        and "Keep access when you are not using the app" in asked_more.text
    )


def test_unticked_scopes_are_not_granted(
    web: httpx.Client, client: oauth.Client, aud: str, world: World, john: str, database_url: str
) -> None:
    params = authorize_params(
        client, aud, scope="launch/patient openid fhirUser offline_access patient/*.rs"
    )
    approval = pick(web, signed_in_at_picker(web, params, john), world.ref("mary"))
    done = approve(web, approval, untick=("offline_access",))
    row = code_row(database_url, query_of(done.headers["location"])["code"])
    assert row is not None and "offline_access" not in row["scope"].split()
    assert "patient/*.rs" in row["scope"].split()


def test_jane_without_consent_gives_contact_details_only(
    web: httpx.Client, client: oauth.Client, aud: str, world: World, john: str, database_url: str
) -> None:
    params = authorize_params(client, aud)
    approval = pick(web, signed_in_at_picker(web, params, john), world.ref("jane"))
    assert approval.status_code == 200
    assert "Not available for this person" in approval.text
    row = code_row(database_url, query_of(approve(web, approval).headers["location"])["code"])
    assert row is not None
    assert "patient/*.rs" not in row["scope"].split()
    assert "patient/Patient.rs" in row["scope"].split()
    assert "patient/Observation.rs" not in row["scope"].split()


def test_the_deny_button_sends_access_denied_and_issues_nothing(
    web: httpx.Client, client: oauth.Client, aud: str, world: World, john: str, database_url: str
) -> None:
    params = authorize_params(client, aud)
    approval = pick(web, signed_in_at_picker(web, params, john), world.ref("mary"))
    fields = form(approval.text, "/oauth/authorize").hidden()
    denied = web.post("/oauth/authorize", data={**fields, "decision": "deny"})
    assert denied.status_code == 303
    answer = query_of(denied.headers["location"])
    assert answer["error"] == "access_denied" and answer["state"] == params["state"]
    assert "code" not in answer
    assert codes_of(database_url, client) == 0 and approvals_of(database_url, client) == 0


def test_without_a_launch_scope_the_token_is_the_users_own(
    web: httpx.Client, database_url: str, aud: str, world: World
) -> None:
    client = add_client(database_url, kind="confidential")
    username = add_user(database_url, world.ref("jane"))
    params = authorize_params(
        client,
        aud,
        scope="openid fhirUser user/*.rs",
        code_challenge=None,
        code_challenge_method=None,
    )
    start = web.get(authorize_url(params))
    next_path = query_of(start.headers["location"])["next"]
    assert sign_in(web, next_path, username).status_code == 303
    approval = web.get(next_path)
    assert approval.status_code == 200 and "your health record" in approval.text
    row = code_row(database_url, query_of(approve(web, approval).headers["location"])["code"])
    assert row is not None
    assert row["fhir_user"] == world.ref("jane") and row["patient"] is None
    assert row["scope"] == "openid fhirUser user/*.rs" and row["code_challenge"] is None


def test_ehr_launch_takes_the_patient_of_the_launch_once(
    web: httpx.Client, database_url: str, aud: str, world: World
) -> None:
    client = add_client(
        database_url, launch_types=("ehr",), scope="openid fhirUser launch user/*.rs patient/*.rs"
    )
    doctor = f"Practitioner/{uuid.uuid4().hex[:8]}"
    username = add_user(database_url, doctor)
    launch = uuid.uuid4().hex
    record = oauth.Launch(
        "System/ehr",
        client.client_id,
        world.ref("tom"),
        "Encounter/e1",
        None,
        datetime.now(UTC) + timedelta(minutes=5),
    )
    run(database_url, lambda conn: oauth.save_launch(conn, launch, record))
    params = authorize_params(
        client, aud, scope="launch openid fhirUser patient/*.rs", launch=launch
    )
    start = web.get(authorize_url(params))
    next_path = query_of(start.headers["location"])["next"]
    assert sign_in(web, next_path, username).status_code == 303
    approval = web.get(next_path)
    assert approval.status_code == 200, approval.text
    row = code_row(database_url, query_of(approve(web, approval).headers["location"])["code"])
    assert row is not None
    assert row["patient"] == world.ref("tom").split("/", 1)[1] and row["encounter"] == "e1"
    assert row["fhir_user"] == doctor
    reused = web.get(authorize_url(params))  # the launch value was used
    assert reused.status_code == 303
    assert query_of(reused.headers["location"])["error"] == "invalid_request"
    assert codes_of(database_url, client) == 1


def test_an_ehr_launch_for_one_user_is_refused_to_another_and_not_used_up(
    server: LiveServer, web: httpx.Client, database_url: str, aud: str, world: World, john: str
) -> None:
    client = add_client(
        database_url, launch_types=("ehr",), scope="openid fhirUser launch user/*.rs patient/*.rs"
    )
    doctor = f"Practitioner/{uuid.uuid4().hex[:8]}"
    launch = uuid.uuid4().hex
    record = oauth.Launch(
        "System/ehr", client.client_id, world.ref("tom"), None, doctor,
        datetime.now(UTC) + timedelta(minutes=5),
    )  # fmt: skip
    run(database_url, lambda conn: oauth.save_launch(conn, launch, record))
    params = authorize_params(
        client, aud, scope="launch openid fhirUser patient/*.rs", launch=launch
    )
    # John, signed in on this browser, is not the practitioner the EHR launched for
    start = web.get(authorize_url(params))
    assert sign_in(web, query_of(start.headers["location"])["next"], john).status_code == 303
    refused = web.get(authorize_url(params))
    assert refused.status_code == 303
    assert refused.headers["location"].startswith(REDIRECT + "?")
    assert query_of(refused.headers["location"])["error"] == "invalid_request"
    assert codes_of(database_url, client) == 0
    assert (
        count(
            database_url,
            "SELECT count(*) FROM oauth_launches WHERE launch_hash = %s AND used_at IS NULL",
            oauth.digest(launch),
        )
        == 1
    )  # not used up by the refusal
    # the practitioner it was made for still gets it
    with browser(server.origin) as theirs:
        begin = theirs.get(authorize_url(params))
        next_path = query_of(begin.headers["location"])["next"]
        assert sign_in(theirs, next_path, add_user(database_url, doctor)).status_code == 303
        approval = theirs.get(next_path)
        assert approval.status_code == 200, approval.text
        code = query_of(approve(theirs, approval).headers["location"])["code"]
    row = code_row(database_url, code)
    assert row is not None and row["fhir_user"] == doctor
    assert row["patient"] == world.ref("tom").split("/", 1)[1]


def test_without_redirect_uri_at_authorization_the_token_request_needs_none(
    web: httpx.Client, client: oauth.Client, database_url: str, aud: str, world: World, john: str
) -> None:
    """RFC 6749 4.1.3: `redirect_uri` is required at the token endpoint only when the
    authorization request had it (it may be left out when the client registered one)."""
    verifier, challenge = pkce()
    params = authorize_params(client, aud, redirect_uri=None, code_challenge=challenge)
    done = approve(web, pick(web, signed_in_at_picker(web, params, john), world.ref("mary")))
    assert done.headers["location"].startswith(REDIRECT + "?")
    code = query_of(done.headers["location"])["code"]
    row = code_row(database_url, code)
    assert row is not None and row["redirect_uri"] is None  # none was given
    token = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": client.client_id,
        "code_verifier": verifier,
    }
    answer = web.post("/oauth/token", data=token)
    assert answer.status_code == 200, answer.text
    # another code the same way: a redirect URI that is not the client's is still wrong
    verifier, challenge = pkce()
    params = authorize_params(client, aud, redirect_uri=None, code_challenge=challenge)
    again = pick(web, web.get(authorize_url(params)), world.ref("mary"))  # approved before
    code = query_of(again.headers["location"])["code"]
    wrong = web.post(
        "/oauth/token",
        data={**token, "code": code, "code_verifier": verifier, "redirect_uri": REDIRECT + "x"},
    )
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"


def test_with_redirect_uri_at_authorization_the_token_request_needs_it(
    web: httpx.Client, client: oauth.Client, database_url: str, aud: str, world: World, john: str
) -> None:
    verifier, challenge = pkce()
    params = authorize_params(client, aud, code_challenge=challenge)
    done = approve(web, pick(web, signed_in_at_picker(web, params, john), world.ref("mary")))
    code = query_of(done.headers["location"])["code"]
    row = code_row(database_url, code)
    assert row is not None and row["redirect_uri"] == REDIRECT
    token = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": client.client_id,
        "code_verifier": verifier,
    }
    answer = web.post("/oauth/token", data=token)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_scopes_the_client_may_not_ask_for_are_dropped(
    web: httpx.Client, database_url: str, aud: str, world: World, john: str
) -> None:
    client = add_client(database_url, scope="openid fhirUser patient/Observation.rs")
    params = authorize_params(
        client, aud, scope="launch/patient openid patient/Observation.rs patient/*.cruds user/*.rs"
    )
    approval = pick(web, signed_in_at_picker(web, params, john), world.ref("mary"))
    row = code_row(database_url, query_of(approve(web, approval).headers["location"])["code"])
    assert row is not None
    assert set(row["scope"].split()) == {"launch/patient", "openid", "patient/Observation.rs"}


# --- negative tests: one request each ----------------------------------------------------------


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.example/callback",
        REDIRECT + "/more",  # a prefix match is no match
        REDIRECT[:-3],  # nor is a part
        REDIRECT + "?x=1",
        REDIRECT.upper(),
    ],
)
def test_a_wrong_or_partial_redirect_uri_gets_an_error_page_never_a_redirect(
    web: httpx.Client, client: oauth.Client, aud: str, redirect_uri: str
) -> None:
    answer = web.get(authorize_url(authorize_params(client, aud, redirect_uri=redirect_uri)))
    assert answer.status_code == 400
    assert "location" not in answer.headers
    assert answer.headers["content-type"].startswith("text/html")
    assert "not one it registered" in answer.text


def test_an_unknown_client_gets_an_error_page(
    web: httpx.Client, client: oauth.Client, aud: str, database_url: str
) -> None:
    unknown = f"nobody-{uuid.uuid4().hex[:8]}"
    answer = web.get(authorize_url(authorize_params(client, aud, client_id=unknown)))
    assert answer.status_code == 400 and "location" not in answer.headers
    assert "not registered" in answer.text
    assert refusals(database_url, f"System/{unknown}", "authorize")


def test_several_redirect_uris_make_it_required(
    web: httpx.Client, database_url: str, aud: str
) -> None:
    client = add_client(database_url, redirect_uris=(REDIRECT, "https://app.example/other"))
    answer = web.get(authorize_url(authorize_params(client, aud, redirect_uri=None)))
    assert answer.status_code == 400 and "location" not in answer.headers


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),  # plain by default
        ({"code_challenge": "short"}, "invalid_request"),
        ({"aud": "https://other.example/fhir"}, "invalid_request"),
        ({"aud": None}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "patient/*.cruds system/*.rs"}, "invalid_scope"),
        ({"scope": "launch/patient patient/Observation.bogus"}, "invalid_scope"),
        ({"scope": "openid patient/*.rs"}, "invalid_scope"),  # patient scopes, no patient
        ({"scope": "launch openid patient/*.rs"}, "invalid_request"),  # no launch value
    ],
)
def test_a_bad_request_goes_back_to_the_app_with_an_error(
    web: httpx.Client,
    client: oauth.Client,
    aud: str,
    database_url: str,
    change: dict[str, str | None],
    error: str,
) -> None:
    params = {**authorize_params(client, aud), **change}
    params = {k: v for k, v in params.items() if v is not None}
    answer = web.get(authorize_url(params))
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith(REDIRECT + "?")
    got = query_of(location)
    assert got["error"] == error and got["state"] == params["state"] and got["error_description"]
    assert "code" not in got
    assert codes_of(database_url, client) == 0
    assert refusals(database_url, f"System/{client.client_id}", "authorize")


def test_plain_pkce_is_refused_for_a_confidential_client_too(
    web: httpx.Client, database_url: str, aud: str
) -> None:
    client = add_client(database_url, kind="confidential")
    answer = web.get(authorize_url(authorize_params(client, aud, code_challenge_method="plain")))
    assert query_of(answer.headers["location"])["error"] == "invalid_request"


def test_a_missing_state_is_an_error_without_state(
    web: httpx.Client, client: oauth.Client, aud: str
) -> None:
    answer = web.get(authorize_url(authorize_params(client, aud, state=None)))
    got = query_of(answer.headers["location"])
    assert got["error"] == "invalid_request" and "state" not in got


def test_a_client_without_standalone_launch_may_not_ask_for_the_picker(
    web: httpx.Client, database_url: str, aud: str
) -> None:
    client = add_client(database_url, launch_types=("ehr",))
    answer = web.get(authorize_url(authorize_params(client, aud)))
    assert query_of(answer.headers["location"])["error"] == "unauthorized_client"


def test_the_redirect_uri_keeps_its_own_query(
    web: httpx.Client, database_url: str, aud: str
) -> None:
    client = add_client(database_url, redirect_uris=("https://app.example/cb?tenant=7",))
    params = {**authorize_params(client, aud), "aud": "https://wrong.example"}
    answer = web.get(authorize_url(params))
    got = query_of(answer.headers["location"])
    assert got["tenant"] == "7" and got["error"] == "invalid_request"


def test_a_tampered_picker_choice_is_403_and_changes_nothing(
    web: httpx.Client, client: oauth.Client, aud: str, world: World, john: str, database_url: str
) -> None:
    picker = signed_in_at_picker(web, authorize_params(client, aud), john)
    fields = form(picker.text, "/oauth/authorize").hidden()
    stranger = world.create({"resourceType": "Patient", "name": [{"family": "Stranger"}]})
    answer = web.post("/oauth/authorize", data={**fields, "patient": stranger})
    assert answer.status_code == 403
    assert "location" not in answer.headers and "Stranger" not in answer.text
    assert codes_of(database_url, client) == 0 and approvals_of(database_url, client) == 0
    assert any(
        "may not choose" in r for r in refusals(database_url, world.ref("john_person"), "authorize")
    )


def test_a_tampered_patient_on_the_approval_page_is_403(
    web: httpx.Client, client: oauth.Client, aud: str, world: World, john: str, database_url: str
) -> None:
    approval = pick(
        web, signed_in_at_picker(web, authorize_params(client, aud), john), world.ref("mary")
    )
    fields = form(approval.text, "/oauth/authorize").hidden()
    stranger = world.create({"resourceType": "Patient", "name": [{"family": "Other"}]})
    answer = web.post(
        "/oauth/authorize",
        data={**fields, "patient": stranger, "decision": "approve", "scope": "patient/*.rs"},
    )
    assert answer.status_code == 403
    assert codes_of(database_url, client) == 0 and approvals_of(database_url, client) == 0


def test_an_approval_without_the_csrf_token_is_403_and_changes_nothing(
    web: httpx.Client, client: oauth.Client, aud: str, world: World, john: str, database_url: str
) -> None:
    approval = pick(
        web, signed_in_at_picker(web, authorize_params(client, aud), john), world.ref("mary")
    )
    fields = form(approval.text, "/oauth/authorize").hidden()
    del fields["csrf_token"]
    answer = web.post("/oauth/authorize", data={**fields, "decision": "approve"})
    assert answer.status_code == 403 and "CSRF" in answer.text
    assert codes_of(database_url, client) == 0 and approvals_of(database_url, client) == 0


def test_a_forged_ticket_is_refused(
    web: httpx.Client, client: oauth.Client, aud: str, world: World, john: str, database_url: str
) -> None:
    picker = signed_in_at_picker(web, authorize_params(client, aud), john)
    fields = form(picker.text, "/oauth/authorize").hidden()
    fields["request"] = fields["request"][:-4] + "AAAA"
    answer = web.post("/oauth/authorize", data={**fields, "patient": world.ref("mary")})
    assert answer.status_code == 400 and "location" not in answer.headers
    assert codes_of(database_url, client) == 0


def test_a_sign_in_without_the_csrf_token_is_403_and_signs_nobody_in(
    web: httpx.Client, john: str
) -> None:
    web.get("/signin")
    answer = web.post("/signin", data={"username": john, "password": PASSWORD, "next": "/signin"})
    assert answer.status_code == 403
    assert "fhir_session" not in answer.cookies and "fhir_session" not in web.cookies


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
        "/\\/evil.example",
        "javascript:alert(1)",
        "http:/evil.example",
        " //evil.example",
        "/\t/evil.example",
        "evil.example",
    ],
)
def test_open_redirect_attempts_in_next_go_to_the_sign_in_page(
    web: httpx.Client, john: str, target: str
) -> None:
    page = web.get("/signin", params={"next": target})
    fields = form(page.text, "/signin").hidden()
    assert fields["next"] == "/signin"
    fields["next"] = target  # even when the form is changed
    answer = web.post("/signin", data={**fields, "username": john, "password": PASSWORD})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/signin"


def test_a_local_next_is_kept(web: httpx.Client, john: str) -> None:
    answer = sign_in(web, "/oauth/authorize?client_id=x&state=y", john)
    assert answer.headers["location"] == "/oauth/authorize?client_id=x&state=y"


def test_brute_force_locks_the_account_even_for_the_right_password(
    web: httpx.Client, world: World, database_url: str
) -> None:
    username = add_user(database_url, world.ref("tom"))
    for _ in range(LOCKOUT_ATTEMPTS):
        wrong = sign_in(web, "/signin", username, "wrong password")
        assert wrong.status_code == 200 and "Wrong username or password" in wrong.text
        assert "fhir_session" not in wrong.cookies
    locked = sign_in(web, "/signin", username, PASSWORD)
    assert locked.status_code == 200 and "Wrong username or password" in locked.text
    assert "fhir_session" not in locked.cookies and "fhir_session" not in web.cookies
    unknown = sign_in(web, "/signin", f"nobody-{uuid.uuid4().hex[:6]}", PASSWORD)
    assert unknown.text.count("Wrong username or password") == locked.text.count(
        "Wrong username or password"
    )
    user = run(database_url, lambda conn: oauth.get_user(conn, username))
    assert user is not None and user.locked_until is not None
    assert user.locked_until > datetime.now(UTC)
    assert any("locked" in r for r in refusals(database_url, world.ref("tom"), "sign-in"))


def test_a_successful_sign_in_is_audited_and_sets_a_safe_cookie(
    web: httpx.Client, world: World, database_url: str
) -> None:
    username = add_user(database_url, world.ref("jane"))
    answer = sign_in(web, "/signin", username)
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    page = web.get("/signin")
    assert "You are signed in" in page.text
    out = form(page.text, "/signout").hidden()
    signed_out = web.post("/signout", data=out)
    assert signed_out.status_code == 303
    assert "You are signed in" not in web.get("/signin").text


def test_the_sign_in_page_offers_the_upstream_provider_when_configured(
    database_url: str,
) -> None:
    settings = replace(
        Settings(),
        login_oidc_issuer="https://login.example.org/realms/x",
        login_oidc_client_id="fhir",
    )
    with LiveServer(settings, database_url, fixed_base=True) as live, browser(live.origin) as web:
        page = web.get("/signin", params={"next": "/oauth/authorize?a=b"})
    assert "Sign in with login.example.org" in page.text
    assert "/signin/oidc?next=%2Foauth%2Fauthorize%3Fa%3Db" in page.text


def test_after_janes_consent_her_lab_results_are_offered(
    web: httpx.Client, client: oauth.Client, aud: str, world: World, john: str, database_url: str
) -> None:
    """Last in the module: it changes the module's family (Jane consents)."""
    world.create(jane_consent(world, "DEMOGRAPHICS", "LAB_RESULTS"))
    approval = pick(
        web, signed_in_at_picker(web, authorize_params(client, aud), john), world.ref("jane")
    )
    row = code_row(database_url, query_of(approve(web, approval).headers["location"])["code"])
    assert row is not None
    scopes = row["scope"].split()
    assert any(
        s.startswith("patient/Observation.rs?category=") and "laboratory" in s for s in scopes
    )
    assert "patient/*.rs" not in scopes
    assert row["claims"]["access_basis"]["consents"]


def test_authorize_post_takes_the_same_parameters_as_a_form(
    web: httpx.Client, client: oauth.Client, aud: str, world: World, john: str
) -> None:
    params = authorize_params(client, aud)
    first = web.post("/oauth/authorize", data=params)  # not signed in yet: the sign-in page
    assert first.status_code == 303 and first.headers["location"].startswith("/signin?next=")
    assert sign_in(web, "/signin", john).status_code == 303
    picker = web.post("/oauth/authorize", data=params)
    assert picker.status_code == 200
    assert world.ref("mary") in [
        o.value for o in form(picker.text, "/oauth/authorize").options("patient")
    ]
    wrong = web.post("/oauth/authorize", data={**params, "redirect_uri": "https://evil.example/cb"})
    assert wrong.status_code == 400 and "location" not in wrong.headers


def test_a_weak_hash_is_replaced_at_the_next_sign_in(
    web: httpx.Client, world: World, database_url: str
) -> None:
    from argon2 import PasswordHasher

    from fhir_server.auth.passwords import needs_rehash

    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    assert needs_rehash(weak)
    username = f"weak-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    run(database_url, lambda conn: oauth.put_user(conn, username, weak, world.ref("john"), now))
    assert sign_in(web, "/signin", username).status_code == 303
    user = run(database_url, lambda conn: oauth.get_user(conn, username))
    assert user is not None and user.password_hash != weak and not needs_rehash(user.password_hash)
