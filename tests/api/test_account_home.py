"""`/account`: signed-in people only (others go to sign in and come back), the navigation of
every account page, and the rate limit on changes (web/acting.py)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from fhir_server.errors import TooManyRequests
from fhir_server.web import acting
from fhir_server.web.session import SignedIn
from tests.support.authorize import add_user, browser, sign_in
from tests.support.servers import LiveServer


def test_the_account_needs_a_sign_in_and_comes_back_after_it(
    server: LiveServer, database_url: str
) -> None:
    with browser(server.origin) as web:
        check_account(web, database_url)


def check_account(web: httpx.Client, database_url: str) -> None:
    away = web.get("/account")
    assert away.status_code == 303
    target = urlsplit(away.headers["location"])
    assert target.path == "/signin" and parse_qs(target.query)["next"] == ["/account"]
    user = add_user(database_url, "Patient/someone")
    back = sign_in(web, "/account", user)
    assert back.status_code == 303 and back.headers["location"] == "/account"
    page = web.get("/account")
    assert page.status_code == 200
    assert "Patient/someone" in page.text
    for path in ("/account/family", "/account/sharing", "/account/activity", "/account/apps"):
        assert f'href="{path}"' in page.text
    assert 'name="csrf_token"' in page.text
    assert page.headers["cache-control"].startswith("no-store")


def test_a_session_acts_with_user_scopes_through_the_token_code() -> None:
    who = SignedIn("local:x", "RelatedPerson/9", 0.0, "password")
    principal = acting.principal_of(who)
    assert (principal.fhir_user, principal.client_id) == ("RelatedPerson/9", "account-pages")
    assert [s.context for s in principal.scopes] == ["user"]


def test_changes_are_limited_per_person() -> None:
    who = SignedIn(f"local:limit-{id(object())}", "Patient/1", 0.0, "password")
    other = SignedIn(f"local:other-{id(object())}", "Patient/2", 0.0, "password")
    for n in range(acting.CHANGES_PER_MINUTE):
        acting.count_change(who, now=1000.0 + n)
    with pytest.raises(TooManyRequests):
        acting.count_change(who, now=1030.0)
    acting.count_change(other, now=1030.0)  # someone else is not held up
    acting.count_change(who, now=1000.0 + 61)  # a minute later the first change has aged out
