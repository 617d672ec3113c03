"""Sign-in through an upstream OpenID Connect provider (fhir_server/web/upstream.py), against a
real provider over HTTP (tests/support/oidc_provider.py): the browser is httpx, following each
redirect by hand and keeping its cookies. A sign-in lands on `next` with a session naming the
one active Person that carries the subject's identifier; every other outcome is a page, no
session, and a refusal in the audit trail."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import psycopg
import pytest
from starlette.requests import Request

from fhir_server.services.context import utc_now
from fhir_server.settings import Settings
from fhir_server.web.session import SESSION_COOKIE, Sessions, SignedIn
from fhir_server.web.upstream import CALLBACK_PATH, FLOW_COOKIE, Provider, SignInRefused, Upstream
from tests.support.oidc_provider import CLIENT_ID, CLIENT_SECRET, OidcProvider
from tests.support.servers import LiveServer, free_port
from tests.support.tokens import auth

SESSION_SECRET = "test-session-secret-" + "x" * 32
NEXT = "/oauth/authorize?response_type=code&client_id=app&state=s1"


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with OidcProvider() as p:
        yield p


@pytest.fixture(scope="module")
def server(provider: OidcProvider, database_url: str) -> Iterator[LiveServer]:
    settings = replace(
        Settings(),
        login_oidc_issuer=provider.issuer,
        login_oidc_client_id=CLIENT_ID,
        login_oidc_client_secret=CLIENT_SECRET,
        session_secret=SESSION_SECRET,
    )
    live = LiveServer(settings, database_url, fixed_base=True)
    provider.redirect_uris = {f"{live.origin}{CALLBACK_PATH}"}
    with live:
        yield live


@pytest.fixture(autouse=True)
def fresh_provider(provider: OidcProvider) -> Iterator[None]:
    provider.reset()
    yield
    provider.reset()


def person(server: LiveServer, system: str, sub: str, *, active: bool = True) -> str:
    """A Person with the identifier, created by a System client; its id."""
    body: dict[str, Any] = {
        "resourceType": "Person",
        "active": active,
        "identifier": [{"system": system, "value": sub}],
        "name": [{"family": "Upstream", "given": ["Test"]}],
    }
    answer = httpx.post(f"{server.origin}/fhir/Person", json=body, headers=auth(), timeout=30)
    assert answer.status_code == 201, answer.text
    id: str = answer.json()["id"]
    return id


def browser() -> httpx.Client:
    return httpx.Client(follow_redirects=False, timeout=30)


def to_provider(b: httpx.Client, server: LiveServer, next: str = NEXT) -> httpx.Response:
    """The provider's answer to the browser sent there by `/signin/oidc`: a redirect back."""
    start = b.get(f"{server.origin}/signin/oidc", params={"next": next})
    assert start.status_code == 303, start.text
    return b.get(start.headers["location"])


def sign_in(b: httpx.Client, server: LiveServer, next: str = NEXT) -> httpx.Response:
    """The whole flow; the callback's answer."""
    back = to_provider(b, server, next)
    assert back.status_code == 302, back.text
    return b.get(back.headers["location"])


def signed_in(b: httpx.Client) -> SignedIn | None:
    """Who the server's own session code says the browser's session cookie names."""
    cookie = b.cookies.get(SESSION_COOKIE)
    if cookie is None:
        return None
    scope = {"type": "http", "headers": [(b"cookie", f"{SESSION_COOKIE}={cookie}".encode())]}
    found = Sessions(SESSION_SECRET, 3_600).from_cookie(Request(scope))
    return found[1] if found is not None else None


def refusals(database_url: str, text: str) -> list[dict[str, Any]]:
    """The stored sign-in refusals whose outcome description mentions `text`."""
    with psycopg.connect(database_url) as db:
        rows = db.execute(
            "SELECT content FROM audit_events WHERE true"
            " AND content->'subtype'->0->>'code' = 'sign-in' AND content->>'outcome' <> '0'"
            " AND strpos(content->>'outcomeDesc', %s) > 0",
            (text,),
        ).fetchall()
    return [r[0] for r in rows]


def assert_refused(answer: httpx.Response, b: httpx.Client, status: int, words: str) -> None:
    assert answer.status_code == status, answer.text
    assert "location" not in answer.headers
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.headers["cache-control"] == "no-store"
    assert words in answer.text
    assert "Traceback" not in answer.text
    assert signed_in(b) is None


def test_a_linked_subject_signs_in_as_its_person(
    provider: OidcProvider, server: LiveServer, database_url: str
) -> None:
    sub = f"alice-{uuid.uuid4().hex}"
    id = person(server, provider.issuer, sub)
    provider.subject = sub
    with browser() as b:
        start = b.get(f"{server.origin}/signin/oidc", params={"next": NEXT})
        assert start.status_code == 303
        sent = urlsplit(start.headers["location"])
        asked = {k: v[0] for k, v in parse_qs(sent.query).items()}
        assert f"{sent.scheme}://{sent.netloc}{sent.path}" == f"{provider.issuer}/authorize"
        assert asked["redirect_uri"] == f"{server.origin}{CALLBACK_PATH}"
        assert asked["code_challenge_method"] == "S256" and asked["scope"] == "openid"
        assert asked["response_type"] == "code" and asked["client_id"] == CLIENT_ID
        assert len(asked["state"]) >= 32 and len(asked["nonce"]) >= 32
        back = b.get(start.headers["location"])
        answer = b.get(back.headers["location"])
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == NEXT
        who = signed_in(b)
        assert FLOW_COOKIE not in b.cookies  # the pending sign-in is used up
    assert who is not None
    assert who.fhir_user == f"Person/{id}"
    assert who.subject == f"oidc:{provider.issuer}|{sub}"
    assert who.method == "oidc"
    assert who.auth_time <= time.time()
    # the success is audited in the Person's name (queued: stored within the flush)
    deadline = time.monotonic() + 20
    while True:
        with psycopg.connect(database_url) as db:
            row = db.execute(
                "SELECT content FROM audit_events WHERE true"
                " AND content->'agent'->0->'who'->>'reference' = %s",
                (f"Person/{id}",),
            ).fetchone()
        if row is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert row is not None
    assert row[0]["subtype"][0]["code"] == "sign-in" and row[0]["outcome"] == "0"


def test_the_identifier_system_can_be_set_and_odd_subjects_match_exactly(
    database_url: str,
) -> None:
    # another provider, which takes the client secret in the form (client_secret_post);
    # a subject with FHIR's search separators in it matches itself only
    system = "urn:example:staff-directory"
    with OidcProvider(client_auth="client_secret_post") as provider:
        settings = replace(
            Settings(),
            login_oidc_issuer=provider.issuer,
            login_oidc_client_id=CLIENT_ID,
            login_oidc_client_secret=CLIENT_SECRET,
            login_oidc_identifier_system=system,
            session_secret=SESSION_SECRET,
        )
        live = LiveServer(settings, database_url, fixed_base=True)
        provider.redirect_uris = {f"{live.origin}{CALLBACK_PATH}"}
        tag = uuid.uuid4().hex
        sub = f"a|b,c$d\\e&f {tag}"
        with live:
            id = person(live, system, sub)
            person(live, provider.issuer, sub)  # the issuer is not the system here
            person(live, system, "a|b,c$d\\e&f")  # a prefix of it is another subject
            provider.subject = sub
            with browser() as b:
                answer = sign_in(b, live)
                assert answer.status_code == 303, answer.text
                who = signed_in(b)
    assert who is not None and who.fhir_user == f"Person/{id}"


def test_an_unlinked_subject_is_told_so_and_refused(
    provider: OidcProvider, server: LiveServer, database_url: str
) -> None:
    sub = f"nobody-{uuid.uuid4().hex}"
    provider.subject = sub
    with browser() as b:
        answer = sign_in(b, server)
        assert_refused(answer, b, 403, "not linked to a record here")
    [event] = refusals(database_url, sub)
    assert event["outcomeDesc"].startswith("not_linked:")


def test_an_inactive_person_does_not_sign_in(
    provider: OidcProvider, server: LiveServer, database_url: str
) -> None:
    sub = f"retired-{uuid.uuid4().hex}"
    person(server, provider.issuer, sub, active=False)
    provider.subject = sub
    with browser() as b:
        assert_refused(sign_in(b, server), b, 403, "not linked to a record here")
    [event] = refusals(database_url, sub)
    assert "only inactive" in event["outcomeDesc"]


def test_two_persons_with_the_identifier_are_ambiguous(
    provider: OidcProvider, server: LiveServer, database_url: str
) -> None:
    sub = f"twin-{uuid.uuid4().hex}"
    person(server, provider.issuer, sub)
    person(server, provider.issuer, sub)
    provider.subject = sub
    with browser() as b:
        assert_refused(sign_in(b, server), b, 403, "more than one record")
    [event] = refusals(database_url, sub)
    assert event["outcomeDesc"].startswith("ambiguous:")


def test_a_callback_with_another_state_is_refused_before_the_code_is_redeemed(
    provider: OidcProvider, server: LiveServer
) -> None:
    sub = f"csrf-{uuid.uuid4().hex}"
    person(server, provider.issuer, sub)
    provider.subject = sub
    with browser() as b:
        back = to_provider(b, server)
        url = urlsplit(back.headers["location"])
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        before = provider.token_requests
        forged = f"{server.origin}{url.path}?{urlencode({**query, 'state': 'x' * 43})}"
        assert_refused(b.get(forged), b, 400, "not started in this browser")
        assert provider.token_requests == before


def test_a_callback_in_another_browser_is_refused(
    provider: OidcProvider, server: LiveServer
) -> None:
    # a login CSRF: the attacker's own code and state, delivered to the victim's browser
    sub = f"attacker-{uuid.uuid4().hex}"
    person(server, provider.issuer, sub)
    provider.subject = sub
    with browser() as attacker:
        callback = to_provider(attacker, server).headers["location"]
    with browser() as victim:
        assert_refused(victim.get(callback), victim, 400, "not started in this browser")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"nonce": "another-nonce"}, "nonce"),
        ({"aud": "another-client"}, "aud"),
        ({"aud": [CLIENT_ID, "another-client"]}, "azp"),
        ({"iss": "https://another-issuer.example"}, "iss"),
        ({"exp": int(time.time()) - 3_600, "iat": int(time.time()) - 3_900}, "expired"),
    ],
)
def test_an_id_token_that_fails_a_claim_check_is_refused(
    provider: OidcProvider,
    server: LiveServer,
    database_url: str,
    change: dict[str, Any],
    why: str,
) -> None:
    sub = f"claims-{uuid.uuid4().hex}"
    person(server, provider.issuer, sub)
    provider.subject, provider.claims = sub, change
    before = {e["id"] for e in refusals(database_url, "ID token was refused")}
    with browser() as b:
        assert_refused(sign_in(b, server), b, 502, "could not be verified")
    [event] = [e for e in refusals(database_url, "ID token was refused") if e["id"] not in before]
    assert why in event["outcomeDesc"]


@pytest.mark.parametrize("signing", ["foreign", "hs256"])
def test_an_id_token_not_signed_by_the_providers_key_is_refused(
    provider: OidcProvider, server: LiveServer, signing: str
) -> None:
    # "hs256": an HMAC keyed with the client secret, which the server must never accept
    sub = f"forged-{uuid.uuid4().hex}"
    person(server, provider.issuer, sub)
    provider.subject, provider.signing = sub, signing
    with browser() as b:
        assert_refused(sign_in(b, server), b, 502, "could not be verified")


def test_a_rotated_provider_key_is_fetched_when_a_token_names_it(
    provider: OidcProvider, server: LiveServer
) -> None:
    sub = f"rotated-{uuid.uuid4().hex}"
    id = person(server, provider.issuer, sub)
    provider.subject = sub
    with browser() as b:
        assert sign_in(b, server).status_code == 303  # the keys are cached by now
    provider.rotate()
    with browser() as b:
        answer = sign_in(b, server)
        assert answer.status_code == 303, answer.text
        who = signed_in(b)
    assert who is not None and who.fhir_user == f"Person/{id}"


def test_the_provider_refusing_gives_a_page(provider: OidcProvider, server: LiveServer) -> None:
    provider.deny = True
    with browser() as b:
        assert_refused(sign_in(b, server), b, 401, "did not sign you in")


def test_a_failing_token_endpoint_gives_a_page_without_the_code(
    provider: OidcProvider, server: LiveServer
) -> None:
    provider.token_error = True
    with browser() as b:
        back = to_provider(b, server)
        code = parse_qs(urlsplit(back.headers["location"]).query)["code"][0]
        answer = b.get(back.headers["location"])
        assert_refused(answer, b, 502, "did not complete the sign-in")
        assert code not in answer.text


def test_a_reused_callback_is_refused(provider: OidcProvider, server: LiveServer) -> None:
    sub = f"replay-{uuid.uuid4().hex}"
    person(server, provider.issuer, sub)
    provider.subject = sub
    with browser() as b:
        back = to_provider(b, server)
        flow = b.cookies.get(FLOW_COOKIE)
        assert b.get(back.headers["location"]).status_code == 303
    with browser() as other:
        # the same cookie and callback again: the provider's code is used up
        other.cookies.set(FLOW_COOKIE, flow or "", path=CALLBACK_PATH)
        assert_refused(other.get(back.headers["location"]), other, 502, "did not complete")


def discover(provider: OidcProvider, issuer: str | None = None) -> Provider:
    settings = replace(
        Settings(), login_oidc_issuer=issuer or provider.issuer, login_oidc_client_id=CLIENT_ID
    )
    return asyncio.run(Upstream(settings, SESSION_SECRET, utc_now).provider())


def test_discovery_reads_the_providers_endpoints(provider: OidcProvider) -> None:
    found = discover(provider)
    assert found.token_endpoint == f"{provider.issuer}/token"
    assert found.algorithms == ("RS256",) and found.client_auth == "client_secret_basic"


def test_discovery_naming_another_issuer_is_refused(provider: OidcProvider) -> None:
    # OpenID Connect Discovery 4.3: the document must name the very issuer configured
    with pytest.raises(SignInRefused, match="provider_invalid"):
        discover(provider, provider.issuer + "/")


def test_a_provider_that_signs_only_with_hmac_or_none_is_refused(provider: OidcProvider) -> None:
    provider.algorithms = ["HS256", "none"]
    with pytest.raises(SignInRefused) as refused:
        discover(provider)
    assert "asymmetric" in refused.value.audit


def test_an_unreachable_provider_is_refused(provider: OidcProvider) -> None:
    with pytest.raises(SignInRefused) as refused:
        discover(provider, f"http://127.0.0.1:{free_port()}")
    assert refused.value.reason == "provider_unavailable" and refused.value.status == 502


@pytest.mark.parametrize(
    "next",
    [
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "/ok\r\nSet-Cookie: x=1",
        "evil.example",
    ],
)
def test_next_must_be_a_local_path(server: LiveServer, next: str) -> None:
    with browser() as b:
        answer = b.get(f"{server.origin}/signin/oidc", params={"next": next})
        assert_refused(answer, b, 400, "not a page of this server")
        assert FLOW_COOKIE not in b.cookies
