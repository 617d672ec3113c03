"""`/account/apps` on a real server and PostgreSQL: John approves an app for Mary through the
real authorization flow (sign-in, picker, approval page, token endpoint), sees it listed on the
page with whose record, the permissions in plain words and when it was last used, and revokes
it: the approval ends, the app's refresh token is refused (`invalid_grant`), introspection says
inactive, and the revocation is an AuditEvent (docs/account-apps.md). Nobody revokes another
account's approval."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from fhir_server.storage import oauth
from tests.api.test_authorize import approve, pick, signed_in_at_picker
from tests.support.authorize import (
    REDIRECT,
    add_client,
    add_user,
    authorize_params,
    browser,
    form,
    forms,
    query_of,
)
from tests.support.oauth import pkce
from tests.support.servers import LiveServer
from tests.support.tokens import auth
from tests.support.world import World

PAGE = "/account/apps"
SCOPE = "launch/patient openid fhirUser offline_access patient/*.rs"


@pytest.fixture
def web(server: LiveServer) -> Iterator[httpx.Client]:
    with browser(server.origin) as made:
        yield made


def connect(
    web: httpx.Client, server: LiveServer, app: oauth.Client, username: str, patient: str
) -> dict[str, Any]:
    """Sign in (once per browser), pick `patient`, approve, redeem the code: the tokens."""
    verifier, challenge = pkce()
    params = authorize_params(app, f"{server.origin}/fhir", scope=SCOPE, code_challenge=challenge)
    if web.cookies.get("fhir_session"):
        picker = web.get(f"/oauth/authorize?{httpx.QueryParams(params)}")
    else:
        picker = signed_in_at_picker(web, params, username)
    done = approve(web, pick(web, picker, patient))
    assert done.status_code == 303, done.text
    code = query_of(done.headers["location"])["code"]
    tokens = web.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": app.client_id,
            "code_verifier": verifier,
        },
    )
    assert tokens.status_code == 200, tokens.text
    body: dict[str, Any] = tokens.json()
    assert body["refresh_token"]
    return body


def refresh(web: httpx.Client, token: str, client_id: str) -> httpx.Response:
    form_ = {"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id}
    return web.post("/oauth/token", data=form_)


def introspect(web: httpx.Client, token: str) -> dict[str, Any]:
    answer = web.post("/oauth/introspect", data={"token": token}, headers=auth())
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def approval_row(database_url: str, client_id: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as db:
        return db.execute(
            "SELECT subject, patient, revoked_at, last_used_at FROM oauth_approvals"
            " WHERE client_id = %s ORDER BY patient",
            (client_id,),
        ).fetchall()


def revoke_form(page: str, client_id: str, patient: str) -> dict[str, str]:
    """The hidden fields of the page's Revoke form of that app and record."""
    for found in [f for f in forms(page) if f.action == PAGE]:
        hidden = found.hidden()
        if hidden.get("client_id") == client_id and hidden.get("patient") == patient:
            return hidden
    raise AssertionError(f"no Revoke form for {client_id} and {patient}")


def test_the_page_needs_a_sign_in(web: httpx.Client) -> None:
    away = web.get(PAGE)
    assert away.status_code == 303 and away.headers["location"].startswith("/signin?next=")


def test_john_sees_the_app_he_approved_for_mary_and_revokes_it(
    web: httpx.Client, server: LiveServer, world: World, database_url: str
) -> None:
    john = add_user(database_url, world.ref("john_person"))
    app = add_client(database_url, name="Growth Chart")
    mary, tom = world.ref("mary"), world.ref("tom")
    tokens = connect(web, server, app, john, mary)
    kept = connect(web, server, app, john, tom)  # the same app, for Tom too

    page = web.get(PAGE)
    assert page.status_code == 200
    assert page.text.count("<h2>Growth Chart</h2>") == 2
    assert f"Mary Doe{world.tag}" in page.text and f"Tom Doe{world.tag}" in page.text
    assert f"Read and search all kinds of records of Mary Doe{world.tag}" in page.text
    assert "Keep access when you are not using the app, until you revoke it" in page.text
    assert "Not since it was allowed" not in page.text  # each was used: the code redeemed
    rows = approval_row(database_url, app.client_id)
    assert [r[1] for r in rows] == sorted([mary, tom])
    assert all(r[0] == f"local:{john}" and r[2] is None and r[3] is not None for r in rows)

    # a refresh counts as a use too
    used_before = rows[0][3] if rows[0][1] == mary else rows[1][3]
    rotated = refresh(web, tokens["refresh_token"], app.client_id)
    assert rotated.status_code == 200, rotated.text
    current = rotated.json()["refresh_token"]
    mary_row = next(r for r in approval_row(database_url, app.client_id) if r[1] == mary)
    assert mary_row[3] > used_before

    done = web.post(PAGE, data=revoke_form(page.text, app.client_id, mary))
    assert done.status_code == 303 and done.headers["location"] == f"{PAGE}?revoked=1"
    after = web.get(done.headers["location"])
    assert "The app's access was revoked" in after.text
    assert f"Mary Doe{world.tag}" not in after.text and f"Tom Doe{world.tag}" in after.text

    refused = refresh(web, current, app.client_id)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert introspect(web, current) == {"active": False}
    # Tom's approval and refresh token are untouched
    assert introspect(web, kept["refresh_token"])["active"] is True
    states = {r[1]: r[2] for r in approval_row(database_url, app.client_id)}
    assert states[mary] is not None and states[tom] is None
    # the next authorization for Mary asks again (the approval is no longer remembered)
    _, challenge = pkce()
    params = authorize_params(app, f"{server.origin}/fhir", scope=SCOPE, code_challenge=challenge)
    again = pick(web, web.get(f"/oauth/authorize?{httpx.QueryParams(params)}"), mary)
    assert again.status_code == 200 and "Allow Growth Chart?" in again.text
    assert revocation_audited(database_url, world.ref("john_person"), app.client_id, mary)


def revocation_audited(database_url: str, account: str, client_id: str, patient: str) -> bool:
    """The security AuditEvent `revoke` of the account page (queued: durable within a second)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with psycopg.connect(database_url) as db:
            rows = db.execute(
                "SELECT content FROM audit_events WHERE true"
                " AND content->'subtype'->0->>'code' = 'revoke'"
                " AND content->'agent'->0->'who'->>'reference' = %s"
                " AND content->>'outcomeDesc' LIKE %s",
                (account, f"%`{client_id}` for {patient}%"),
            ).fetchall()
        if rows:
            return True
        time.sleep(0.2)
    return False


def test_nobody_revokes_another_accounts_approval(
    server: LiveServer, world: World, database_url: str
) -> None:
    app = add_client(database_url, name="Diary")
    jane = add_user(database_url, world.ref("jane"))
    john = add_user(database_url, world.ref("john_person"))
    with browser(server.origin) as janes:
        tokens = connect(janes, server, app, jane, world.ref("jane"))
    with browser(server.origin) as johns:
        signed_in_at_picker(
            johns, authorize_params(add_client(database_url), f"{server.origin}/fhir"), john
        )
        page = johns.get(PAGE)
        assert "Diary" not in page.text
        token = form(page.text, "/signout").hidden()["csrf_token"]
        forged = {"csrf_token": token, "client_id": app.client_id, "patient": world.ref("jane")}
        answer = johns.post(PAGE, data=forged)
        assert answer.status_code == 303  # nothing of his to revoke: back to his list
        without_csrf = johns.post(PAGE, data={k: v for k, v in forged.items() if k != "csrf_token"})
        assert without_csrf.status_code == 403
        assert introspect(johns, tokens["refresh_token"])["active"] is True
    (row,) = approval_row(database_url, app.client_id)
    assert row[0] == f"local:{jane}" and row[2] is None
