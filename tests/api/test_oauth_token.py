"""`POST /oauth/token` on a real server whose base URL is its own (the issuer and audience), with
codes saved the way the authorization endpoint saves them and client assertions signed with real
RSA and EC keys. Each negative test is one request, and checks that what it refused stays refused
(a code burned, a chain revoked) and nothing was issued."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fhir_server.settings import Settings
from fhir_server.storage import oauth
from tests.support.oauth import (
    ASSERTION_TYPE,
    REDIRECT,
    Keypair,
    backend_client,
    make_code,
    now,
    pkce,
    public_client,
    register,
    run,
)
from tests.support.resources import patient
from tests.support.servers import LiveServer
from tests.support.tokens import auth

APP_SCOPE = "launch/patient openid fhirUser offline_access patient/*.rs"


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.origin, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def patient_id(http: httpx.Client) -> str:
    created = http.post("/fhir/Patient", json=patient("Tokenson", "Ada"), headers=auth())
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def token_url(server: LiveServer) -> str:
    return f"{server.origin}/oauth/token"


def redeem(
    http: httpx.Client, code: str, client_id: str, verifier: str | None, **kw: str
) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": client_id,
        **kw,
    }
    if verifier is not None:
        form["code_verifier"] = verifier
    return http.post("/oauth/token", data=form)


def refresh(http: httpx.Client, token: str, client_id: str, **kw: str) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id, **kw}
    return http.post("/oauth/token", data=form)


def claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def refused(answer: httpx.Response, error: str, status: int = 400) -> None:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["error"] == error
    assert body["error_description"]
    assert "access_token" not in body and "refresh_token" not in body
    assert answer.headers["cache-control"] == "no-store"


def launched(
    database_url: str, http: httpx.Client, patient_id: str, scope: str = APP_SCOPE
) -> tuple[oauth.Client, dict[str, Any]]:
    app = public_client(database_url, scope)
    verifier, challenge = pkce()
    code = make_code(
        database_url,
        app.client_id,
        scope,
        challenge,
        patient=patient_id,
        fhir_user=f"Patient/{patient_id}",
        nonce="n-123",
    )
    answer = redeem(http, code, app.client_id, verifier)
    assert answer.status_code == 200, answer.text
    return app, answer.json()


# --- authorization_code --------------------------------------------------------------------------


def test_a_code_gives_tokens_for_its_grant_that_read_the_fhir_api(
    database_url: str, server: LiveServer, http: httpx.Client, patient_id: str
) -> None:
    app = public_client(database_url, APP_SCOPE)
    verifier, challenge = pkce()
    code = make_code(
        database_url,
        app.client_id,
        APP_SCOPE,
        challenge,
        patient=patient_id,
        fhir_user=f"Patient/{patient_id}",
        nonce="n-123",
        claims={"access_basis": {"self": f"Patient/{patient_id}"}},
    )
    answer = redeem(http, code, app.client_id, verifier)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["pragma"] == "no-cache"
    body = answer.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == APP_SCOPE
    assert body["patient"] == patient_id
    assert body["expires_in"] == 900
    assert body["refresh_token"]
    access = claims(body["access_token"])
    base = f"{server.origin}/fhir"
    assert (access["iss"], access["aud"], access["client_id"]) == (base, base, app.client_id)
    assert access["fhirUser"] == f"Patient/{patient_id}"
    assert access["patient"] == patient_id
    assert access["access_basis"] == {"self": f"Patient/{patient_id}"}
    assert access["exp"] - access["iat"] == 900
    identity = claims(body["id_token"])
    assert identity["aud"] == app.client_id and identity["nonce"] == "n-123"
    assert identity["fhirUser"] == f"{base}/Patient/{patient_id}"
    # the token works on the FHIR API, verified by the same path as every other
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    read = http.get(f"/fhir/Patient/{patient_id}", headers=bearer)
    assert read.status_code == 200, read.text
    assert read.json()["id"] == patient_id


def test_a_wrong_verifier_is_refused_and_burns_the_code(
    database_url: str, http: httpx.Client, patient_id: str
) -> None:
    app = public_client(database_url, APP_SCOPE)
    verifier, challenge = pkce()
    code = make_code(database_url, app.client_id, APP_SCOPE, challenge, patient=patient_id)
    refused(redeem(http, code, app.client_id, pkce()[0]), "invalid_grant")
    refused(redeem(http, code, app.client_id, verifier), "invalid_grant")


def test_a_missing_verifier_is_refused(database_url: str, http: httpx.Client) -> None:
    app = public_client(database_url, APP_SCOPE)
    _, challenge = pkce()
    code = make_code(database_url, app.client_id, APP_SCOPE, challenge)
    refused(redeem(http, code, app.client_id, None), "invalid_request")


def test_a_public_client_code_without_pkce_is_refused(
    database_url: str, http: httpx.Client
) -> None:
    app = public_client(database_url, APP_SCOPE)
    code = make_code(database_url, app.client_id, APP_SCOPE, None)
    refused(redeem(http, code, app.client_id, None), "invalid_request")


def test_a_reused_code_is_refused_and_revokes_what_its_first_redemption_issued(
    database_url: str, http: httpx.Client, patient_id: str
) -> None:
    app = public_client(database_url, APP_SCOPE)
    verifier, challenge = pkce()
    code = make_code(database_url, app.client_id, APP_SCOPE, challenge, patient=patient_id)
    first = redeem(http, code, app.client_id, verifier)
    assert first.status_code == 200, first.text
    refused(redeem(http, code, app.client_id, verifier), "invalid_grant")
    refused(refresh(http, first.json()["refresh_token"], app.client_id), "invalid_grant")


def test_an_expired_code_is_refused(database_url: str, http: httpx.Client) -> None:
    app = public_client(database_url, APP_SCOPE)
    verifier, challenge = pkce()
    code = make_code(database_url, app.client_id, APP_SCOPE, challenge, expires_in=-1)
    refused(redeem(http, code, app.client_id, verifier), "invalid_grant")


def test_a_code_of_another_client_is_refused(database_url: str, http: httpx.Client) -> None:
    app = public_client(database_url, APP_SCOPE)
    thief = public_client(database_url, APP_SCOPE)
    verifier, challenge = pkce()
    code = make_code(database_url, app.client_id, APP_SCOPE, challenge)
    refused(redeem(http, code, thief.client_id, verifier), "invalid_grant")


def test_a_wrong_redirect_uri_is_refused(database_url: str, http: httpx.Client) -> None:
    app = public_client(database_url, APP_SCOPE)
    verifier, challenge = pkce()
    code = make_code(database_url, app.client_id, APP_SCOPE, challenge)
    answer = redeem(http, code, app.client_id, verifier, redirect_uri=REDIRECT + "/../evil")
    refused(answer, "invalid_grant")


def test_an_unknown_client_is_invalid_client_with_a_challenge(http: httpx.Client) -> None:
    answer = redeem(http, "nope", "no-such-client", pkce()[0])
    refused(answer, "invalid_client", 401)
    assert answer.headers["www-authenticate"].startswith('Bearer error="invalid_client"')


def test_without_offline_or_online_access_no_refresh_token(
    database_url: str, http: httpx.Client, patient_id: str
) -> None:
    _, body = launched(database_url, http, patient_id, "launch/patient patient/*.rs")
    assert "refresh_token" not in body and "id_token" not in body


def test_online_access_gives_a_refresh_token_that_ends_with_the_session(
    database_url: str, http: httpx.Client, patient_id: str
) -> None:
    _, body = launched(database_url, http, patient_id, "launch/patient online_access patient/*.rs")
    token = body["refresh_token"]
    record = run(database_url, lambda conn: oauth.active_refresh(conn, token, now()))
    assert record is not None and record.expires_at is not None
    assert (record.expires_at - now()).total_seconds() <= Settings().oauth_session_seconds


def test_a_repeated_parameter_is_refused_and_does_not_claim_the_code(
    database_url: str, http: httpx.Client
) -> None:
    app = public_client(database_url, APP_SCOPE)
    verifier, challenge = pkce()
    code = make_code(database_url, app.client_id, APP_SCOPE, challenge)
    form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("redirect_uri", REDIRECT + "x"),
        ("client_id", app.client_id),
        ("code_verifier", verifier),
    ]
    answer = http.post(
        "/oauth/token",
        content=urlencode(form),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    refused(answer, "invalid_request")
    assert redeem(http, code, app.client_id, verifier).status_code == 200


def test_a_json_body_or_an_unknown_grant_type_is_refused(http: httpx.Client) -> None:
    refused(
        http.post("/oauth/token", json={"grant_type": "client_credentials"}),
        "unsupported_grant_type",
    )
    refused(http.post("/oauth/token", data={"grant_type": "password"}), "unsupported_grant_type")


# --- refresh_token ---------------------------------------------------------------------------------


def test_refresh_round_trip_rotates_the_token(
    database_url: str, http: httpx.Client, patient_id: str
) -> None:
    app, first = launched(database_url, http, patient_id)
    answer = refresh(http, first["refresh_token"], app.client_id)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["refresh_token"] != first["refresh_token"]
    assert body["scope"] == APP_SCOPE and body["patient"] == patient_id
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    assert http.get(f"/fhir/Patient/{patient_id}", headers=bearer).status_code == 200
    # stored only as a digest
    with psycopg.connect(database_url) as db:
        stored = db.execute(
            "SELECT count(*) FROM oauth_refresh_tokens WHERE token_hash = %s",
            (body["refresh_token"],),
        ).fetchone()
    assert stored == (0,)
    # and narrowed on request
    narrowed = refresh(http, body["refresh_token"], app.client_id, scope="patient/*.rs")
    assert narrowed.status_code == 200, narrowed.text
    assert narrowed.json()["scope"] == "patient/*.rs"
    assert claims(narrowed.json()["access_token"])["scope"] == "patient/*.rs"


def test_a_rotated_refresh_token_reused_revokes_the_chain(
    database_url: str, http: httpx.Client, patient_id: str
) -> None:
    app, first = launched(database_url, http, patient_id)
    second = refresh(http, first["refresh_token"], app.client_id)
    assert second.status_code == 200, second.text
    refused(refresh(http, first["refresh_token"], app.client_id), "invalid_grant")
    refused(refresh(http, second.json()["refresh_token"], app.client_id), "invalid_grant")


def test_scope_escalation_at_refresh_is_refused_and_the_token_still_works(
    database_url: str, http: httpx.Client, patient_id: str
) -> None:
    app, first = launched(database_url, http, patient_id)
    answer = refresh(http, first["refresh_token"], app.client_id, scope="patient/*.cruds")
    refused(answer, "invalid_scope")
    assert refresh(http, first["refresh_token"], app.client_id).status_code == 200


def test_a_revoked_refresh_token_is_refused(
    database_url: str, http: httpx.Client, patient_id: str
) -> None:
    app, first = launched(database_url, http, patient_id)
    token = first["refresh_token"]
    assert run(database_url, lambda conn: oauth.revoke_refresh(conn, token, app.client_id, now()))
    refused(refresh(http, token, app.client_id), "invalid_grant")


def test_a_refresh_token_of_another_client_is_refused(
    database_url: str, http: httpx.Client, patient_id: str
) -> None:
    _, first = launched(database_url, http, patient_id)
    other = public_client(database_url, APP_SCOPE)
    refused(refresh(http, first["refresh_token"], other.client_id), "invalid_grant")


# --- client_credentials (SMART Backend Services) ---------------------------------------------------


def backend_token(
    http: httpx.Client, client_id: str, assertion: str, scope: str | None = "system/*.rs"
) -> httpx.Response:
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    if scope is not None:
        form["scope"] = scope
    return http.post("/oauth/token", data=form)


def test_a_backend_service_gets_a_system_token_with_rs384(
    database_url: str, server: LiveServer, http: httpx.Client, patient_id: str
) -> None:
    keys = Keypair.rsa("RS384")
    client = backend_client(database_url, keys)
    answer = backend_token(
        http, client.client_id, keys.assertion(client.client_id, token_url(server))
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["scope"] == "system/*.rs" and "refresh_token" not in body
    access = claims(body["access_token"])
    assert access["sub"] == client.client_id and "fhirUser" not in access
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    assert http.get(f"/fhir/Patient/{patient_id}", headers=bearer).status_code == 200


class _Keys(BaseHTTPRequestHandler):
    document = b"{}"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.document)

    def log_message(self, *args: object) -> None:
        return None


def test_a_backend_service_with_es384_keys_served_at_its_jwks_uri(
    database_url: str, server: LiveServer, http: httpx.Client
) -> None:
    keys = Keypair.ec("ES384")
    handler = type("Handler", (_Keys,), {"document": json.dumps(keys.jwks).encode()})
    jwks_site = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=jwks_site.serve_forever, daemon=True)
    thread.start()
    try:
        uri = f"http://127.0.0.1:{jwks_site.server_address[1]}/jwks.json"
        client = backend_client(database_url, keys, jwks_uri=uri)
        assertion = keys.assertion(client.client_id, token_url(server))
        answer = backend_token(http, client.client_id, assertion)
        assert answer.status_code == 200, answer.text
        assert answer.json()["scope"] == "system/*.rs"
    finally:
        jwks_site.shutdown()
        jwks_site.server_close()


def test_a_replayed_client_assertion_is_refused(
    database_url: str, server: LiveServer, http: httpx.Client
) -> None:
    keys = Keypair.rsa()
    client = backend_client(database_url, keys)
    assertion = keys.assertion(client.client_id, token_url(server))
    assert backend_token(http, client.client_id, assertion).status_code == 200
    refused(backend_token(http, client.client_id, assertion), "invalid_client", 401)


def test_a_client_id_naming_another_client_than_the_assertion_is_invalid_client(
    database_url: str, server: LiveServer, http: httpx.Client
) -> None:
    """RFC 7521 4.2: the `client_id` parameter, when given, must name the assertion's client."""
    keys = Keypair.rsa()
    client = backend_client(database_url, keys)
    other = backend_client(database_url, Keypair.rsa(), scope="system/*.cruds")
    assertion = keys.assertion(client.client_id, token_url(server))
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        "client_id": other.client_id,
        "scope": "system/*.rs",
    }
    refused(http.post("/oauth/token", data=form), "invalid_client", 401)
    # the refusal did not use up the assertion; naming its own client is fine
    answer = http.post("/oauth/token", data={**form, "client_id": client.client_id})
    assert answer.status_code == 200, answer.text
    assert claims(answer.json()["access_token"])["client_id"] == client.client_id


@pytest.mark.parametrize(
    ("overrides", "what"),
    [
        # `exp` as seconds from when the test runs (not from collection)
        ({"exp": -120}, "expired"),
        ({"exp": 600}, "more than five minutes ahead"),
        ({"aud": "https://elsewhere.example/token"}, "another audience"),
        ({"iss": "someone-else"}, "iss is not sub"),
        ({"jti": None}, "no jti"),
    ],
)
def test_a_bad_client_assertion_is_refused(
    database_url: str,
    server: LiveServer,
    http: httpx.Client,
    overrides: dict[str, Any],
    what: str,
) -> None:
    keys = Keypair.rsa()
    client = backend_client(database_url, keys)
    values = {k: v for k, v in overrides.items() if v is not None}
    if "exp" in values:
        values["exp"] += int(time.time())
    assertion = keys.assertion(client.client_id, token_url(server), **values)
    if overrides.get("jti", "") is None:
        body = claims(assertion)
        del body["jti"]
        assertion = jwt.encode(body, keys.private, algorithm="RS384", headers={"kid": keys.kid})
    refused(backend_token(http, client.client_id, assertion), "invalid_client", 401)


def test_a_symmetric_or_unsigned_assertion_is_refused(
    database_url: str, server: LiveServer, http: httpx.Client
) -> None:
    keys = Keypair.rsa()
    client = backend_client(database_url, keys)
    body = claims(keys.assertion(client.client_id, token_url(server)))
    # HS256 keyed with the client's public key (the classic algorithm confusion), and `none`
    public_pem = keys.private.public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
    )

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": keys.kid}).encode())
    payload = b64(json.dumps({**body, "jti": uuid.uuid4().hex}).encode())
    signature = b64(hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    refused(
        backend_token(http, client.client_id, f"{header}.{payload}.{signature}"),
        "invalid_client",
        401,
    )
    none_header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64(json.dumps({**body, "jti": uuid.uuid4().hex}).encode())
    refused(
        backend_token(http, client.client_id, f"{none_header}.{payload}."), "invalid_client", 401
    )


def test_an_assertion_signed_with_rs256_is_refused(
    database_url: str, server: LiveServer, http: httpx.Client
) -> None:
    keys = Keypair.rsa("RS384")
    client = backend_client(database_url, keys)
    body = claims(keys.assertion(client.client_id, token_url(server)))
    weak = jwt.encode(body, keys.private, algorithm="RS256", headers={"kid": keys.kid})
    refused(backend_token(http, client.client_id, weak), "invalid_client", 401)


def test_a_key_not_registered_for_the_client_is_refused(
    database_url: str, server: LiveServer, http: httpx.Client
) -> None:
    client = backend_client(database_url, Keypair.rsa())
    stranger = Keypair.rsa()
    assertion = stranger.assertion(client.client_id, token_url(server))
    refused(backend_token(http, client.client_id, assertion), "invalid_client", 401)


def test_a_non_system_scope_is_refused_on_client_credentials(
    database_url: str, server: LiveServer, http: httpx.Client
) -> None:
    keys = Keypair.rsa()
    client = backend_client(database_url, keys, scope="system/*.rs patient/*.rs")
    assertion = keys.assertion(client.client_id, token_url(server))
    refused(
        backend_token(http, client.client_id, assertion, "system/*.rs patient/*.rs"),
        "invalid_scope",
    )


def test_a_system_scope_the_client_was_not_registered_for_is_refused(
    database_url: str, server: LiveServer, http: httpx.Client
) -> None:
    keys = Keypair.rsa()
    client = backend_client(database_url, keys, scope="system/Patient.rs")
    assertion = keys.assertion(client.client_id, token_url(server))
    refused(backend_token(http, client.client_id, assertion, "system/*.cruds"), "invalid_scope")


def test_a_public_client_cannot_use_client_credentials(
    database_url: str, http: httpx.Client
) -> None:
    app = public_client(database_url, "system/*.rs", grant_types=("client_credentials",))
    answer = http.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": app.client_id,
            "scope": "system/*.rs",
        },
    )
    refused(answer, "invalid_client", 401)


def test_a_confidential_app_redeems_its_code_with_a_client_assertion_only(
    database_url: str, server: LiveServer, http: httpx.Client, patient_id: str
) -> None:
    keys = Keypair.ec("ES384")
    app = register(
        database_url,
        oauth.Client(
            client_id=f"clinic-{uuid.uuid4().hex[:10]}",
            name="a confidential app",
            kind="confidential",
            redirect_uris=(REDIRECT,),
            scope=APP_SCOPE,
            jwks=keys.jwks,
        ),
    )
    code = make_code(database_url, app.client_id, APP_SCOPE, None, patient=patient_id)
    # its client_id alone does not authenticate it
    refused(redeem(http, code, app.client_id, None), "invalid_client", 401)
    code = make_code(database_url, app.client_id, APP_SCOPE, None, patient=patient_id)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": keys.assertion(app.client_id, token_url(server)),
    }
    answer = http.post("/oauth/token", data=form)
    assert answer.status_code == 200, answer.text
    assert answer.json()["patient"] == patient_id


# --- the audit trail -------------------------------------------------------------------------------


def test_issues_and_refusals_are_audit_events(
    database_url: str, http: httpx.Client, patient_id: str
) -> None:
    app, _ = launched(database_url, http, patient_id)
    verifier, challenge = pkce()
    code = make_code(database_url, app.client_id, APP_SCOPE, challenge, patient=patient_id)
    refused(redeem(http, code, app.client_id, "x" * 43), "invalid_grant")
    deadline = time.monotonic() + 20
    while True:
        with psycopg.connect(database_url) as db:
            rows = db.execute(
                "SELECT content FROM audit_events WHERE true"
                " AND content->'subtype'->0->>'code' = 'token'"
                " AND content->>'outcomeDesc' LIKE %s",
                (f"%`{app.client_id}`%",),
            ).fetchall()
        outcomes = sorted(r[0]["outcome"] for r in rows)
        if outcomes == ["0", "4"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert outcomes == ["0", "4"]
    texts = " ".join(r[0]["outcomeDesc"] for r in rows)
    assert code not in texts and verifier not in texts
