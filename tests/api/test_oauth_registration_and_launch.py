"""RFC 7591 registration (`POST /oauth/register`) and EHR launch contexts (`POST /oauth/launch`):
System clients only, every refusal audited before the answer, nothing stored by a refused
request, the launch value stored as a digest and good once."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from fhir_server.auth import issuer
from fhir_server.services.context import utc_now
from fhir_server.storage import oauth
from tests.support.pooler import app_database
from tests.support.servers import LiveServer
from tests.support.tokens import KEYS_DIR, auth

APP = "https://app.example.org/callback"


def system_token(server: LiveServer, scope: str = "system/*.cruds") -> tuple[str, str]:
    """A System token this server issued itself (verified like any other): (client id, token)."""
    client_id = f"ehr-{uuid.uuid4().hex[:8]}"
    base = f"{server.origin}/fhir"
    keys = issuer.ServerKeys.load(issuer.keys_path(KEYS_DIR, None))
    claims = issuer.access_token_claims(
        issuer=base,
        audience=base,
        subject=client_id,
        client_id=client_id,
        scope=scope,
        lifetime_seconds=300,
    )
    return client_id, keys.sign(claims)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def events(
    db: psycopg.Connection[Any], account: str, subtype: str, *, outcome: str, wait: bool = False
) -> list[dict[str, Any]]:
    """The security events of `account`; with `wait`, until one is there (allowed events are
    queued and flushed within about a second)."""
    deadline = time.monotonic() + 15
    while True:
        rows = db.execute(
            "SELECT content FROM audit_events WHERE true"
            " AND coalesce(content->'agent'->0->'who'->>'reference',"
            " content->'agent'->0->'who'->'identifier'->>'value') = %s"
            " AND content->'subtype'->0->>'code' = %s AND content->>'outcome' = %s",
            (account, subtype, outcome),
        ).fetchall()
        if rows or not wait or time.monotonic() > deadline:
            return [r[0] for r in rows]
        time.sleep(0.2)


def client_count(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM oauth_clients").fetchone()
    assert row is not None
    return int(row[0])


def public_jwks() -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {"keys": [{**jwk, "kid": "k1", "alg": "ES384"}]}


PUBLIC_APP = {
    "client_name": "Growth chart",
    "redirect_uris": [APP],
    "token_endpoint_auth_method": "none",
    "scope": "openid fhirUser launch launch/patient patient/*.rs offline_access",
    "smart_launch_types": ["ehr", "standalone"],
    "client_uri": "https://app.example.org",
    "software_id": "growth-chart",
}


# --- registration ----------------------------------------------------------------------------


def test_register_a_public_app(server: LiveServer, db: psycopg.Connection[Any]) -> None:
    caller, token = system_token(server)
    response = httpx.post(f"{server.origin}/oauth/register", json=PUBLIC_APP, headers=bearer(token))
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    client_id = body.pop("client_id")
    assert uuid.UUID(client_id)
    assert abs(body.pop("client_id_issued_at") - time.time()) < 300
    assert body == {
        "client_name": "Growth chart",
        "token_endpoint_auth_method": "none",
        "redirect_uris": [APP],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "scope": PUBLIC_APP["scope"],
        "smart_launch_types": ["ehr", "standalone"],
        "client_uri": "https://app.example.org",
        "software_id": "growth-chart",
    }
    row = db.execute(
        "SELECT kind, redirect_uris, launch_types, scope FROM oauth_clients WHERE client_id = %s",
        (client_id,),
    ).fetchone()
    assert row == ("public", [APP], ["ehr", "standalone"], PUBLIC_APP["scope"])
    [event] = events(db, f"System/{caller}", "register", outcome="0", wait=True)
    assert client_id in event["outcomeDesc"]


def test_register_a_backend_service(server: LiveServer, db: psycopg.Connection[Any]) -> None:
    _, token = system_token(server)
    jwks = public_jwks()
    response = httpx.post(
        f"{server.origin}/oauth/register",
        json={
            "client_name": "Nightly export",
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks": jwks,
            "scope": "system/*.rs",
        },
        headers=bearer(token),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["grant_types"] == ["client_credentials"]
    assert body["response_types"] == []
    assert body["smart_launch_types"] == []
    assert body["jwks"] == jwks
    stored = db.execute(
        "SELECT kind, jwks FROM oauth_clients WHERE client_id = %s", (body["client_id"],)
    ).fetchone()
    assert stored == ("confidential", jwks)


def test_register_needs_a_token(server: LiveServer, db: psycopg.Connection[Any]) -> None:
    before = client_count(db)
    refused_before = len(events(db, "System/unauthenticated", "register", outcome="4"))
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"}):
        response = httpx.post(f"{server.origin}/oauth/register", json=PUBLIC_APP, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_token"
        assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert client_count(db) == before
    # refusals are stored before the answer: no waiting
    assert len(events(db, "System/unauthenticated", "register", outcome="4")) == refused_before + 2


def test_register_refuses_a_user_token(server: LiveServer, db: psycopg.Connection[Any]) -> None:
    before = client_count(db)
    patient = f"p{uuid.uuid4().hex[:10]}"
    response = httpx.post(
        f"{server.origin}/oauth/register",
        json=PUBLIC_APP,
        headers=auth(f"Patient/{patient}", "patient/*.rs", patient=patient),
    )
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"
    assert client_count(db) == before
    [event] = events(db, f"Patient/{patient}", "register", outcome="4")
    assert "insufficient_scope" in event["outcomeDesc"]


def backend_metadata(scope: str) -> dict[str, Any]:
    return {
        "client_name": "Escalation",
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": public_jwks(),
        "scope": scope,
    }


@pytest.mark.parametrize(
    ("held", "metadata"),
    [
        # the tester's attack: a read-only System client registers a writer with its own key
        ("system/*.rs", backend_metadata("system/*.cruds")),
        ("system/*.rs", backend_metadata("system/*.rs system/Patient.d")),
        ("system/Observation.rs", backend_metadata("system/Patient.rs")),
        ("system/Observation.rs?category=laboratory", backend_metadata("system/Observation.rs")),
        # a user-facing app may not do more than the caller could either
        ("system/*.rs", {**PUBLIC_APP, "scope": "openid launch/patient patient/*.cruds"}),
        ("system/*.rs", {**PUBLIC_APP, "scope": "openid user/Observation.write"}),
        ("system/Observation.rs", {**PUBLIC_APP, "scope": "launch/patient patient/*.rs"}),
    ],
)
def test_a_registration_never_grants_more_than_the_registering_token_holds(
    server: LiveServer, db: psycopg.Connection[Any], held: str, metadata: dict[str, Any]
) -> None:
    caller, token = system_token(server, scope=held)
    before = client_count(db)
    response = httpx.post(f"{server.origin}/oauth/register", json=metadata, headers=bearer(token))
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "insufficient_scope"
    assert "more than the registering token holds" in response.json()["error_description"]
    assert client_count(db) == before  # nothing stored
    [event] = events(db, f"System/{caller}", "register", outcome="4")
    assert "insufficient_scope" in event["outcomeDesc"]


@pytest.mark.parametrize(
    ("held", "metadata"),
    [
        ("system/*.cruds", backend_metadata("system/*.rs system/Patient.cud")),
        ("system/*.rs", backend_metadata("system/Observation.rs?category=laboratory")),
        (
            "system/Observation.rs?category=laboratory",
            backend_metadata("system/Observation.s?category=laboratory&code=1234-5"),
        ),
        ("system/*.rs", PUBLIC_APP),  # openid, launch, offline_access: no resource access
        ("system/Observation.read", {**PUBLIC_APP, "scope": "openid user/Observation.rs"}),
    ],
)
def test_a_registration_within_the_registering_token_is_accepted(
    server: LiveServer, db: psycopg.Connection[Any], held: str, metadata: dict[str, Any]
) -> None:
    _, token = system_token(server, scope=held)
    response = httpx.post(f"{server.origin}/oauth/register", json=metadata, headers=bearer(token))
    assert response.status_code == 201, response.text
    stored = db.execute(
        "SELECT scope FROM oauth_clients WHERE client_id = %s", (response.json()["client_id"],)
    ).fetchone()
    assert stored == (metadata["scope"],)


def _without(name: str) -> dict[str, Any]:
    return {k: v for k, v in PUBLIC_APP.items() if k != name}


@pytest.mark.parametrize(
    ("metadata", "error", "words"),
    [
        ({**PUBLIC_APP, "redirect_uris": ["http://app.example.org/cb"]}, "invalid_redirect_uri",
         "must use https"),
        ({**PUBLIC_APP, "redirect_uris": [f"{APP}#x"]}, "invalid_redirect_uri", "fragment"),
        ({**PUBLIC_APP, "redirect_uris": "https://app.example.org/cb"}, "invalid_redirect_uri",
         "list of strings"),
        ({**PUBLIC_APP, "redirect_uris": ["not a url"]}, "invalid_redirect_uri", ""),
        (_without("token_endpoint_auth_method"), "invalid_client_metadata",
         "token_endpoint_auth_method"),
        ({**PUBLIC_APP, "token_endpoint_auth_method": "client_secret_basic"},
         "invalid_client_metadata", "token_endpoint_auth_method"),
        ({**PUBLIC_APP, "token_endpoint_auth_method": "private_key_jwt"},
         "invalid_client_metadata", "needs exactly one of"),
        ({**PUBLIC_APP, "token_endpoint_auth_method": "private_key_jwt", "jwks": public_jwks(),
          "jwks_uri": "https://keys.example.org/jwks"}, "invalid_client_metadata", "jwks"),
        ({**PUBLIC_APP, "token_endpoint_auth_method": "private_key_jwt",
          "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}, "invalid_client_metadata", "jwks"),
        ({**PUBLIC_APP, "smart_launch_types": ["bogus"]}, "invalid_client_metadata", "bogus"),
        ({**PUBLIC_APP, "response_types": ["token"]}, "invalid_client_metadata", "code"),
        ({**PUBLIC_APP, "grant_types": ["implicit"]}, "invalid_client_metadata", "implicit"),
        (_without("scope"), "invalid_client_metadata", "scope"),
        ({**PUBLIC_APP, "scope": "system/*.rs"}, "invalid_client_metadata", "system/"),
        ({**PUBLIC_APP, "scope": "patient/Observation.xyz"}, "invalid_client_metadata", "cruds"),
        ({**PUBLIC_APP, "client_name": 7}, "invalid_client_metadata", "client_name"),
        ({**PUBLIC_APP, "client_uri": None}, "invalid_client_metadata", "is null"),
    ],
)  # fmt: skip
def test_register_refuses_bad_metadata(
    server: LiveServer,
    db: psycopg.Connection[Any],
    metadata: dict[str, Any],
    error: str,
    words: str,
) -> None:
    caller, token = system_token(server)
    before = client_count(db)
    response = httpx.post(f"{server.origin}/oauth/register", json=metadata, headers=bearer(token))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == error
    assert words in body["error_description"]
    assert client_count(db) == before
    [event] = events(db, f"System/{caller}", "register", outcome="4")
    assert error in event["outcomeDesc"]


def test_register_refuses_what_is_not_json(server: LiveServer, db: psycopg.Connection[Any]) -> None:
    _, token = system_token(server)
    before = client_count(db)
    for content, kind in (
        ("[1]", "application/json"),
        ("x=1", "application/x-www-form-urlencoded"),
    ):
        response = httpx.post(
            f"{server.origin}/oauth/register",
            content=content,
            headers={**bearer(token), "Content-Type": kind},
        )
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"
    assert client_count(db) == before


# --- EHR launch ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart(server: LiveServer) -> dict[str, str]:
    """A patient with an encounter, another patient, a practitioner, and apps."""
    with httpx.Client(base_url=f"{server.origin}/fhir", headers=auth(), timeout=30) as fhir:

        def create(resource: dict[str, Any]) -> str:
            response = fhir.post(f"/{resource['resourceType']}", json=resource)
            assert response.status_code == 201, response.text
            created: str = response.json()["id"]
            return created

        patient = create({"resourceType": "Patient", "gender": "male"})
        other = create({"resourceType": "Patient", "gender": "female"})
        encounter = create(
            {
                "resourceType": "Encounter",
                "status": "in-progress",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "AMB",
                },
                "subject": {"reference": f"Patient/{patient}"},
            }
        )
        practitioner = create({"resourceType": "Practitioner", "name": [{"family": "Who"}]})
    _, token = system_token(server)
    apps = {}
    for name, launches in (("ehr_app", ["ehr"]), ("standalone_app", ["standalone"])):
        response = httpx.post(
            f"{server.origin}/oauth/register",
            json={**PUBLIC_APP, "smart_launch_types": launches},
            headers=bearer(token),
        )
        assert response.status_code == 201
        apps[name] = response.json()["client_id"]
    return {
        "patient": patient,
        "other": other,
        "encounter": encounter,
        "practitioner": practitioner,
        **apps,
    }


def launches_by(db: psycopg.Connection[Any], caller: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT launch_hash, client_id, patient, encounter, fhir_user, expires_at"
        " FROM oauth_launches WHERE created_by = %s",
        (f"System/{caller}",),
    ).fetchall()


def use_launch(
    database_url: str, value: str, client_id: str, fhir_user: str
) -> oauth.Launch | None:
    async def go() -> oauth.Launch | None:
        pool = app_database(database_url, pool_size=1)
        await pool.open()
        try:
            async with pool.transaction() as conn:
                return await oauth.use_launch(
                    conn, value, utc_now(), client_id=client_id, fhir_user=fhir_user
                )
        finally:
            await pool.close()

    return asyncio.run(go())


def test_ehr_launch(
    server: LiveServer, chart: dict[str, str], db: psycopg.Connection[Any], database_url: str
) -> None:
    caller, token = system_token(server)
    response = httpx.post(
        f"{server.origin}/oauth/launch",
        json={
            "patient": chart["patient"],
            "encounter": f"Encounter/{chart['encounter']}",
            "client_id": chart["ehr_app"],
            "fhir_user": f"Practitioner/{chart['practitioner']}",
        },
        headers=bearer(token),
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    value = body.pop("launch")
    assert len(value) >= 40
    assert body == {
        "expires_in": 300,
        "patient": chart["patient"],
        "encounter": chart["encounter"],
    }
    [row] = launches_by(db, caller)
    assert row[0] == hashlib.sha256(value.encode()).hexdigest()  # a digest, never the value
    assert row[1:5] == (
        chart["ehr_app"],
        chart["patient"],
        chart["encounter"],
        f"Practitioner/{chart['practitioner']}",
    )
    # good once
    doctor = f"Practitioner/{chart['practitioner']}"
    # not for another app nor another user, and such a try does not use it up
    assert use_launch(database_url, value, chart["ehr_app"], "Practitioner/someone-else") is None
    assert use_launch(database_url, value, "another-app", doctor) is None
    first = use_launch(database_url, value, chart["ehr_app"], doctor)
    assert first is not None and first.patient == chart["patient"]
    assert use_launch(database_url, value, chart["ehr_app"], doctor) is None
    [event] = events(db, f"System/{caller}", "launch", outcome="0", wait=True)
    assert event["entity"][0]["what"]["reference"] == f"Patient/{chart['patient']}"
    assert value not in json.dumps(event)


def test_ehr_launch_from_a_form(server: LiveServer, chart: dict[str, str]) -> None:
    _, token = system_token(server)
    response = httpx.post(
        f"{server.origin}/oauth/launch",
        data={"patient": f"Patient/{chart['patient']}"},
        headers=bearer(token),
    )
    assert response.status_code == 200, response.text
    assert response.json()["patient"] == chart["patient"]
    assert "encounter" not in response.json()


@pytest.mark.parametrize(
    ("fields", "status", "error", "words"),
    [
        ({}, 400, "invalid_request", "`patient` is required"),
        ({"patient": "no-such-patient"}, 400, "invalid_request", "does not exist"),
        ({"patient": "bad id!"}, 400, "invalid_request", "Patient id"),
        ({"patient": "{patient}", "encounter": "{other_encounter}"}, 400, "invalid_request",
         "does not exist"),
        ({"patient": "{other}", "encounter": "{encounter}"}, 400, "invalid_request",
         "not an encounter of"),
        ({"patient": "{patient}", "client_id": "{standalone_app}"}, 400, "invalid_request",
         "EHR launch"),
        ({"patient": "{patient}", "client_id": "unknown-app"}, 400, "invalid_request",
         "EHR launch"),
        ({"patient": "{patient}", "fhir_user": "Practitioner/nobody"}, 400, "invalid_request",
         "does not exist"),
        ({"patient": "{patient}", "fhir_user": "Observation/1"}, 400, "invalid_request",
         "fhir_user"),
        ({"patient": "{patient}", "encounter": None}, 400, "invalid_request",
         "`encounter` must be a string"),
        ({"patient": 7}, 400, "invalid_request", "`patient` must be a string"),
    ],
)  # fmt: skip
def test_ehr_launch_refusals(
    server: LiveServer,
    chart: dict[str, str],
    db: psycopg.Connection[Any],
    fields: dict[str, Any],
    status: int,
    error: str,
    words: str,
) -> None:
    caller, token = system_token(server)
    values = {**chart, "other_encounter": "missing-encounter"}
    sent = {k: v.format(**values) if isinstance(v, str) else v for k, v in fields.items()}
    response = httpx.post(f"{server.origin}/oauth/launch", json=sent, headers=bearer(token))
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert words in response.json()["error_description"]
    assert launches_by(db, caller) == []
    [event] = events(db, f"System/{caller}", "launch", outcome="4")
    assert error in event["outcomeDesc"]


def test_ehr_launch_only_for_what_the_ehr_may_read(
    server: LiveServer, chart: dict[str, str], db: psycopg.Connection[Any]
) -> None:
    caller, token = system_token(server, scope="system/Observation.rs")
    response = httpx.post(
        f"{server.origin}/oauth/launch", json={"patient": chart["patient"]}, headers=bearer(token)
    )
    assert response.status_code == 403
    assert response.json()["error"] == "access_denied"
    assert launches_by(db, caller) == []


def test_ehr_launch_refuses_users_and_strangers(
    server: LiveServer, chart: dict[str, str], db: psycopg.Connection[Any]
) -> None:
    patient = chart["patient"]
    as_patient = httpx.post(
        f"{server.origin}/oauth/launch",
        json={"patient": patient},
        headers=auth(f"Patient/{patient}", "patient/*.rs", patient=patient),
    )
    assert as_patient.status_code == 403
    assert as_patient.json()["error"] == "insufficient_scope"
    assert events(db, f"Patient/{patient}", "launch", outcome="4") != []
    anonymous = httpx.post(f"{server.origin}/oauth/launch", json={"patient": patient})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "invalid_token"
    # a token of another server (wrong issuer) is no better
    other = issuer.ServerKeys((issuer.new_key(),)).sign(
        issuer.access_token_claims(
            issuer=f"{server.origin}/fhir",
            audience=f"{server.origin}/fhir",
            subject="forged",
            client_id="forged",
            scope="system/*.cruds",
            lifetime_seconds=300,
        )
    )
    forged = httpx.post(
        f"{server.origin}/oauth/launch", json={"patient": patient}, headers=bearer(other)
    )
    assert forged.status_code == 401
    assert launches_by(db, "forged") == []


def test_a_registered_apps_origin_may_call_the_api_from_a_browser(server: LiveServer) -> None:
    """CORS admits the origin of a registered redirect URI (oauth/origins.py) at once."""
    origin = f"https://{uuid.uuid4().hex[:12]}.example.org"
    asked = {"Origin": origin}
    before = httpx.get(f"{server.origin}/fhir/metadata", headers=asked)
    assert "access-control-allow-origin" not in before.headers
    _, token = system_token(server)
    app = {**PUBLIC_APP, "redirect_uris": [f"{origin}/callback"]}
    registered = httpx.post(f"{server.origin}/oauth/register", json=app, headers=bearer(token))
    assert registered.status_code == 201, registered.text
    after = httpx.get(f"{server.origin}/fhir/metadata", headers=asked)
    assert after.headers["access-control-allow-origin"] == origin
    # never the pages
    page = httpx.get(f"{server.origin}/signin", headers=asked)
    assert "access-control-allow-origin" not in page.headers
