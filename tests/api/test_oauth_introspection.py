"""`POST /oauth/introspect` (RFC 7662) and `POST /oauth/revoke` (RFC 7009) on a real server with
tokens issued by its own token endpoint."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from fhir_server.auth import issuer
from tests.support.oauth import (
    ASSERTION_TYPE,
    REDIRECT,
    Keypair,
    backend_client,
    make_code,
    pkce,
    public_client,
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
    created = http.post("/fhir/Patient", json=patient("Introspected", "Ida"), headers=auth())
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


@pytest.fixture(scope="module")
def resource_server(database_url: str) -> tuple[str, Keypair]:
    keys = Keypair.rsa("RS384")
    return backend_client(database_url, keys).client_id, keys


def launch(database_url: str, http: httpx.Client, patient_id: str) -> tuple[str, dict[str, Any]]:
    app = public_client(database_url, APP_SCOPE)
    verifier, challenge = pkce()
    code = make_code(
        database_url,
        app.client_id,
        APP_SCOPE,
        challenge,
        patient=patient_id,
        fhir_user=f"Patient/{patient_id}",
    )
    answer = http.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": app.client_id,
            "code_verifier": verifier,
        },
    )
    assert answer.status_code == 200, answer.text
    return app.client_id, answer.json()


def introspect(
    http: httpx.Client, server: LiveServer, caller: tuple[str, Keypair], token: str
) -> httpx.Response:
    client_id, keys = caller
    assertion = keys.assertion(client_id, f"{server.origin}/oauth/introspect")
    return http.post(
        "/oauth/introspect",
        data={
            "token": token,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    )


def refresh(http: httpx.Client, token: str, client_id: str) -> httpx.Response:
    return http.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id},
    )


def revoke(http: httpx.Client, token: str, client_id: str) -> httpx.Response:
    return http.post("/oauth/revoke", data={"token": token, "client_id": client_id})


# --- introspection -------------------------------------------------------------------------------


def test_an_access_token_introspects_with_its_claims(
    database_url: str,
    server: LiveServer,
    http: httpx.Client,
    patient_id: str,
    resource_server: tuple[str, Keypair],
) -> None:
    client_id, tokens = launch(database_url, http, patient_id)
    answer = introspect(http, server, resource_server, tokens["access_token"])
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    base = f"{server.origin}/fhir"
    assert body["active"] is True
    assert (body["client_id"], body["scope"], body["patient"]) == (client_id, APP_SCOPE, patient_id)
    assert body["fhirUser"] == f"Patient/{patient_id}"
    assert (body["iss"], body["aud"], body["token_type"]) == (base, base, "Bearer")
    assert body["exp"] > time.time() and body["iat"] <= time.time() + 5 and body["sub"]


def test_a_refresh_token_introspects_with_a_system_bearer_token(
    database_url: str, http: httpx.Client, patient_id: str
) -> None:
    client_id, tokens = launch(database_url, http, patient_id)
    answer = http.post("/oauth/introspect", data={"token": tokens["refresh_token"]}, headers=auth())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["active"] is True and body["token_type"] == "refresh_token"
    assert (body["client_id"], body["patient"]) == (client_id, patient_id)
    # once rotated, it is not active any more
    assert refresh(http, tokens["refresh_token"], client_id).status_code == 200
    again = http.post("/oauth/introspect", data={"token": tokens["refresh_token"]}, headers=auth())
    assert again.json() == {"active": False}


def test_anything_else_is_inactive(
    server: LiveServer, http: httpx.Client, resource_server: tuple[str, Keypair]
) -> None:
    forged = issuer.ServerKeys((issuer.new_key(),)).sign(
        issuer.access_token_claims(
            issuer=f"{server.origin}/fhir",
            audience=f"{server.origin}/fhir",
            subject="local:mallory",
            client_id="x",
            scope="patient/*.rs",
            lifetime_seconds=300,
            patient="1",
        )
    )
    for token in ("not-a-token", forged, "a.b.c"):
        answer = introspect(http, server, resource_server, token)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"active": False}


def test_introspection_needs_an_authenticated_resource_server(
    database_url: str, http: httpx.Client, patient_id: str
) -> None:
    client_id, tokens = launch(database_url, http, patient_id)
    anonymous = http.post("/oauth/introspect", data={"token": tokens["access_token"]})
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "invalid_client"
    assert "active" not in anonymous.json()
    public = http.post(
        "/oauth/introspect", data={"token": tokens["access_token"], "client_id": client_id}
    )
    assert public.status_code == 401
    # a user's own token is not a resource server's credential
    user = http.post(
        "/oauth/introspect",
        data={"token": tokens["access_token"]},
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert user.status_code == 401


# --- revocation ----------------------------------------------------------------------------------


def test_a_client_revokes_its_refresh_token_chain(
    database_url: str, http: httpx.Client, patient_id: str
) -> None:
    client_id, tokens = launch(database_url, http, patient_id)
    answer = revoke(http, tokens["refresh_token"], client_id)
    assert answer.status_code == 200, answer.text
    assert refresh(http, tokens["refresh_token"], client_id).json()["error"] == "invalid_grant"
    status = http.post("/oauth/introspect", data={"token": tokens["refresh_token"]}, headers=auth())
    assert status.json() == {"active": False}


def test_revoking_a_rotated_refresh_token_revokes_its_whole_chain(
    database_url: str, http: httpx.Client, patient_id: str
) -> None:
    client_id, tokens = launch(database_url, http, patient_id)
    rotated = refresh(http, tokens["refresh_token"], client_id)
    assert rotated.status_code == 200, rotated.text
    newest = rotated.json()["refresh_token"]
    answer = revoke(http, tokens["refresh_token"], client_id)  # the rotated one
    assert answer.status_code == 200, answer.text
    assert refresh(http, newest, client_id).json()["error"] == "invalid_grant"
    status = http.post("/oauth/introspect", data={"token": newest}, headers=auth())
    assert status.json() == {"active": False}
    with psycopg.connect(database_url) as db:
        row = db.execute(
            "SELECT count(*) FILTER (WHERE revoked_at IS NULL), count(*)"
            " FROM oauth_refresh_tokens WHERE client_id = %s",
            (client_id,),
        ).fetchone()
    assert row == (0, 2)


def test_a_rotated_refresh_token_of_another_client_is_not_revoked(
    database_url: str, http: httpx.Client, patient_id: str
) -> None:
    client_id, tokens = launch(database_url, http, patient_id)
    newest = refresh(http, tokens["refresh_token"], client_id).json()["refresh_token"]
    other = public_client(database_url, APP_SCOPE)
    answer = revoke(http, tokens["refresh_token"], other.client_id)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    assert refresh(http, newest, client_id).status_code == 200


def test_a_client_id_naming_another_client_than_the_assertion_is_invalid_client(
    database_url: str,
    server: LiveServer,
    http: httpx.Client,
    patient_id: str,
    resource_server: tuple[str, Keypair],
) -> None:
    """RFC 7521 4.2: `client_id`, when given with a client assertion, must name the same
    client."""
    _, tokens = launch(database_url, http, patient_id)
    caller, keys = resource_server
    other = backend_client(database_url, Keypair.rsa()).client_id
    for path in ("/oauth/introspect", "/oauth/revoke"):
        answer = http.post(
            path,
            data={
                "token": tokens["refresh_token"],
                "client_id": other,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": keys.assertion(caller, f"{server.origin}{path}"),
            },
        )
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"] == "invalid_client"
        assert "active" not in answer.json()
    # the same caller naming itself is fine
    same = http.post(
        "/oauth/introspect",
        data={
            "token": tokens["refresh_token"],
            "client_id": caller,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": keys.assertion(caller, f"{server.origin}/oauth/introspect"),
        },
    )
    assert same.status_code == 200 and same.json()["active"] is True


def test_revoking_an_unknown_token_is_200(database_url: str, http: httpx.Client) -> None:
    app = public_client(database_url, APP_SCOPE)
    answer = revoke(http, "never-issued", app.client_id)
    assert answer.status_code == 200, answer.text


def test_a_token_of_another_client_is_not_revoked(
    database_url: str, http: httpx.Client, patient_id: str
) -> None:
    client_id, tokens = launch(database_url, http, patient_id)
    other = public_client(database_url, APP_SCOPE)
    answer = revoke(http, tokens["refresh_token"], other.client_id)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    assert refresh(http, tokens["refresh_token"], client_id).status_code == 200


def test_revoking_an_access_token_revokes_its_refresh_chain_but_it_lives_until_exp(
    database_url: str, http: httpx.Client, patient_id: str
) -> None:
    client_id, tokens = launch(database_url, http, patient_id)
    answer = revoke(http, tokens["access_token"], client_id)
    assert answer.status_code == 200, answer.text
    assert refresh(http, tokens["refresh_token"], client_id).json()["error"] == "invalid_grant"
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert http.get(f"/fhir/Patient/{patient_id}", headers=bearer).status_code == 200


def test_revocations_are_audit_events(
    database_url: str, http: httpx.Client, patient_id: str
) -> None:
    client_id, tokens = launch(database_url, http, patient_id)
    assert revoke(http, tokens["refresh_token"], client_id).status_code == 200
    deadline = time.monotonic() + 20
    while True:
        with psycopg.connect(database_url) as db:
            rows = db.execute(
                "SELECT content FROM audit_events WHERE true"
                " AND content->'subtype'->0->>'code' = 'revoke'"
                " AND content->'agent'->0->'who'->>'reference' = %s"
                " AND content->>'outcomeDesc' LIKE %s",
                (f"Patient/{patient_id}", f"%`{client_id}`%"),
            ).fetchall()
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(rows) == 1
    assert tokens["refresh_token"] not in rows[0][0]["outcomeDesc"]
