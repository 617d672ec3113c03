"""Sessions and grants end on the server (docs/smart-authorize.md "Session", docs/smart-admin.md
"Accounts"): a copied session cookie stops working after sign-out, after `fhir-server user
remove` and after `user add --replace`; removing an account revokes its refresh tokens and
approvals in the same transaction, and the token endpoint and introspection refuse a grant
whose local account is gone even when nothing revoked it. Each attack is tried with what the
attacker kept (a cookie, a refresh token, an access token) after the change."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from fhir_server.oauth import admin
from fhir_server.services.context import utc_now
from fhir_server.storage import oauth
from tests.api.test_account_apps import connect, introspect, refresh
from tests.api.test_authorize import approve, pick
from tests.support.authorize import (
    PASSWORD,
    add_client,
    add_user,
    authorize_params,
    authorize_url,
    browser,
    form,
    query_of,
    sign_in,
)
from tests.support.oauth import pkce
from tests.support.pooler import app_database
from tests.support.servers import LiveServer
from tests.support.world import World

SESSION = "fhir_session"


@pytest.fixture
def web(server: LiveServer) -> Iterator[httpx.Client]:
    with browser(server.origin) as made:
        yield made


def replayed(server: LiveServer, cookie: str) -> httpx.Client:
    """Another browser holding a copy of the session cookie."""
    other = browser(server.origin)
    other.cookies.set(SESSION, cookie, domain="127.0.0.1")
    return other


def assert_no_session(b: httpx.Client, server: LiveServer, app: oauth.Client) -> None:
    """Neither the account pages nor the authorization endpoint take the browser for signed in."""
    page = b.get("/account/apps")
    assert page.status_code == 303 and page.headers["location"].startswith("/signin?next="), (
        page.text
    )
    asked = b.get(authorize_url(authorize_params(app, f"{server.origin}/fhir")))
    assert asked.status_code == 303 and asked.headers["location"].startswith("/signin?next=")
    assert "You are signed in" not in b.get("/signin").text


def sessions_of(database_url: str, username: str) -> int:
    with psycopg.connect(database_url) as db:
        row = db.execute(
            "SELECT count(*) FROM oauth_sessions WHERE subject = %s", (f"local:{username}",)
        ).fetchone()
    assert row is not None
    return int(row[0])


def live_grants(database_url: str, username: str) -> tuple[int, int, int]:
    """The account's refresh tokens, approvals and unredeemed codes not revoked."""
    subject = f"local:{username}"
    with psycopg.connect(database_url) as db:
        counts = [
            db.execute(sql, (subject,)).fetchone()
            for sql in (
                "SELECT count(*) FROM oauth_refresh_tokens WHERE subject = %s"
                " AND revoked_at IS NULL",
                "SELECT count(*) FROM oauth_approvals WHERE subject = %s AND revoked_at IS NULL",
                "SELECT count(*) FROM oauth_codes WHERE subject = %s AND used_at IS NULL",
            )
        ]
    a, b, c = (int(r[0]) if r is not None else -1 for r in counts)
    return a, b, c


def as_admin(database_url: str, work: Any) -> Any:
    """Run `work(db)` with a `Database` as `fhir-server user ...` opens it."""

    async def go() -> Any:
        db = app_database(database_url, pool_size=1)
        await db.open()
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(go())


def pending_code(
    web: httpx.Client, server: LiveServer, app: oauth.Client, patient: str
) -> tuple[str, str]:
    """A code issued to the signed-in browser's account and not redeemed yet (and its verifier)."""
    verifier, challenge = pkce()
    params = authorize_params(app, f"{server.origin}/fhir", code_challenge=challenge)
    picker = web.get(authorize_url(params))
    assert picker.status_code == 200, picker.text
    done = pick(web, picker, patient)
    if done.status_code == 200:  # not approved before: the approval page
        done = approve(web, done)
    assert done.status_code == 303, done.text
    return query_of(done.headers["location"])["code"], verifier


def redeem(web: httpx.Client, app: oauth.Client, code: str, verifier: str) -> httpx.Response:
    return web.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": app.redirect_uris[0],
            "client_id": app.client_id,
            "code_verifier": verifier,
        },
    )


# --- sign-out ------------------------------------------------------------------------------------


def test_sign_out_ends_the_session_for_a_copied_cookie_too(
    web: httpx.Client, server: LiveServer, world: World, database_url: str
) -> None:
    username = add_user(database_url, world.ref("john_person"))
    app = add_client(database_url)
    assert sign_in(web, "/account", username).status_code == 303
    cookie = web.cookies[SESSION]
    assert web.get("/account/apps").status_code == 200
    assert sessions_of(database_url, username) == 1
    out = form(web.get("/signin").text, "/signout").hidden()
    assert web.post("/signout", data=out).status_code == 303
    assert sessions_of(database_url, username) == 0
    with replayed(server, cookie) as thief:
        assert_no_session(thief, server, app)


def test_a_cookie_without_a_server_session_is_no_session(
    web: httpx.Client, server: LiveServer, world: World, database_url: str
) -> None:
    """A cookie signed with the right secret but whose session the server never started (or
    ended): what a cookie of the stateless sessions before 0012_oauth_sessions is."""
    username = add_user(database_url, world.ref("john_person"))
    app = add_client(database_url)
    assert sign_in(web, "/account", username).status_code == 303
    with psycopg.connect(database_url) as db:
        db.execute("DELETE FROM oauth_sessions WHERE subject = %s", (f"local:{username}",))
    assert_no_session(web, server, app)


def test_sign_out_ends_only_that_browsers_session(
    server: LiveServer, world: World, database_url: str
) -> None:
    username = add_user(database_url, world.ref("john_person"))
    with browser(server.origin) as laptop, browser(server.origin) as phone:
        assert sign_in(laptop, "/account", username).status_code == 303
        assert sign_in(phone, "/account", username).status_code == 303
        out = form(laptop.get("/signin").text, "/signout").hidden()
        assert laptop.post("/signout", data=out).status_code == 303
        assert laptop.get("/account/apps").status_code == 303
        assert phone.get("/account/apps").status_code == 200


# --- account removal -----------------------------------------------------------------------------


def test_removing_an_account_ends_its_sessions_and_everything_issued_to_it(
    web: httpx.Client, server: LiveServer, world: World, database_url: str
) -> None:
    username = add_user(database_url, world.ref("john_person"))
    app = add_client(database_url)
    tokens = connect(web, server, app, username, world.ref("mary"))
    code, verifier = pending_code(web, server, app, world.ref("tom"))
    cookie = web.cookies[SESSION]
    assert introspect(web, tokens["refresh_token"])["active"] is True
    assert live_grants(database_url, username) == (1, 2, 1)

    revoked = as_admin(database_url, lambda db: admin.remove_user(db, username, utc_now()))

    assert revoked == 1
    assert live_grants(database_url, username) == (0, 0, 0)  # in the same transaction
    assert sessions_of(database_url, username) == 0
    answer = refresh(web, tokens["refresh_token"], app.client_id)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    assert "access_token" not in answer.json()
    assert redeem(web, app, code, verifier).json()["error"] == "invalid_grant"
    assert introspect(web, tokens["refresh_token"]) == {"active": False}
    assert introspect(web, tokens["access_token"]) == {"active": False}
    assert_no_session(web, server, app)
    with replayed(server, cookie) as thief:
        assert_no_session(thief, server, app)


def test_an_account_gone_without_revocation_has_no_grants_and_no_session(
    web: httpx.Client, server: LiveServer, world: World, database_url: str
) -> None:
    """The token endpoint, introspection and the session check ask whether the account is
    there, whatever revoked or did not revoke its grants (a row deleted by hand, a restore)."""
    username = add_user(database_url, world.ref("john_person"))
    app = add_client(database_url)
    tokens = connect(web, server, app, username, world.ref("mary"))
    code, verifier = pending_code(web, server, app, world.ref("tom"))
    with psycopg.connect(database_url) as db:
        db.execute("DELETE FROM oauth_users WHERE username = %s", (username,))
    assert introspect(web, tokens["refresh_token"]) == {"active": False}
    assert introspect(web, tokens["access_token"]) == {"active": False}
    answer = refresh(web, tokens["refresh_token"], app.client_id)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    assert redeem(web, app, code, verifier).json()["error"] == "invalid_grant"
    # the refused refresh revoked its chain: an account made again under the name gets nothing
    assert live_grants(database_url, username)[0] == 0
    assert_no_session(web, server, app)


# --- account replacement -------------------------------------------------------------------------


def test_replacing_an_accounts_fhir_user_ends_what_its_old_identity_was_issued(
    web: httpx.Client, server: LiveServer, world: World, database_url: str
) -> None:
    username = add_user(database_url, world.ref("john_person"))
    app = add_client(database_url)
    tokens = connect(web, server, app, username, world.ref("mary"))
    cookie = web.cookies[SESSION]

    revoked = as_admin(
        database_url,
        lambda db: admin.add_user(
            db, username, "a new password", world.ref("jane"), utc_now(), replace=True
        ),
    )

    assert revoked == 1
    assert live_grants(database_url, username) == (0, 0, 0)
    assert sessions_of(database_url, username) == 0
    assert refresh(web, tokens["refresh_token"], app.client_id).json()["error"] == "invalid_grant"
    with replayed(server, cookie) as thief:
        assert_no_session(thief, server, app)  # never again John's Person
    # the account signs in anew, as its new identity
    with browser(server.origin) as fresh:
        assert sign_in(fresh, "/account", username, "a new password").status_code == 303
        assert fresh.get("/account/apps").status_code == 200


def test_a_new_password_ends_the_sessions_and_keeps_the_apps(
    web: httpx.Client, server: LiveServer, world: World, database_url: str
) -> None:
    username = add_user(database_url, world.ref("john_person"))
    app = add_client(database_url)
    tokens = connect(web, server, app, username, world.ref("mary"))
    cookie = web.cookies[SESSION]

    revoked = as_admin(
        database_url,
        lambda db: admin.add_user(
            db, username, "another password", world.ref("john_person"), utc_now(), replace=True
        ),
    )

    assert revoked == 0
    with replayed(server, cookie) as thief:
        assert_no_session(thief, server, app)
    assert sign_in(web, "/account", username, PASSWORD).status_code == 200  # the old password
    # the apps the person connected keep working (docs/smart-admin.md: disconnect them on the
    # account page, or change the FHIR user, to end them)
    assert refresh(web, tokens["refresh_token"], app.client_id).status_code == 200
