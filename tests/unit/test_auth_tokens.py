"""Bearer token verification with real keys: every way a token can be wrong is a 401."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fhir_server.auth.devkeys import DEV_AUDIENCE, DEV_ISSUER, dev_token, ensure_dev_key
from fhir_server.auth.scopes import Scope, ScopeError, granted, parse_scope, parse_scopes
from fhir_server.auth.tokens import TokenSettings, TokenVerifier, bearer
from fhir_server.errors import Unauthorized

ISSUER = "https://idp.example.org"
AUDIENCE = "https://fhir.example.org/fhir"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = {
        "keys": [
            {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "rsa1"},
            {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "ec1"},
        ]
    }
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps(jwks))
    return {"rsa": rsa_key, "ec": ec_key, "other": other, "path": path}


@pytest.fixture(scope="module")
def verifier(keys: dict[str, Any]) -> TokenVerifier:
    return TokenVerifier(TokenSettings(issuer=ISSUER, audience=AUDIENCE, jwks=str(keys["path"])))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "iat": now,
        # made when the tests are collected, and the suite runs for many minutes before some
        # of them: an hour, so that only the test that means to expire a token sees one
        "exp": now + 3600,
        "scope": "openid fhirUser user/*.rs",
        "fhirUser": "RelatedPerson/123",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(
    keys: dict[str, Any],
    payload: dict[str, Any],
    *,
    key: str = "rsa",
    kid: str = "rsa1",
    alg: str = "RS256",
) -> str:
    return jwt.encode(payload, keys[key], algorithm=alg, headers={"kid": kid})


def test_a_good_token_gives_the_principal(keys: dict[str, Any], verifier: TokenVerifier) -> None:
    principal = verifier.verify(
        sign(keys, claims(fhirUser="https://fhir.example.org/fhir/RelatedPerson/123"))
    )
    assert principal.fhir_user == "RelatedPerson/123"
    assert principal.scopes == (Scope("user", "*", frozenset("rs")),)
    ec_principal = verifier.verify(sign(keys, claims(), key="ec", kid="ec1", alg="ES256"))
    assert ec_principal.subject == "user-1"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (claims(exp=int(time.time()) - 120), "expired"),
        (claims(nbf=int(time.time()) + 86_400), "not valid yet"),
        (claims(iss="https://evil.example.org"), "another issuer"),
        (claims(aud="https://other.example.org/fhir"), "another audience"),
        (claims(sub=None), "`sub`"),
        (claims(nonce="n-0S6_WzA2Mj"), "ID token"),
        (claims(scope="patient/Observation.rs"), "patient"),
        (claims(scope="user/*.rs", fhirUser=None), "fhirUser"),
        (claims(fhirUser="Organization/1"), "fhirUser"),
        (claims(scope="user/Observation.sr"), "subsequence"),
        # identity claims reach SQL and the audit trail: text PostgreSQL and UTF-8 can hold
        (claims(fhirUser="Patient/a\x00b"), "`fhirUser` claim holds a NUL"),
        (claims(fhirUser="Patient/a\ud800"), "`fhirUser` claim holds a NUL or an unpaired"),
        (claims(sub="user\x00"), "`sub` claim holds a NUL"),
        (claims(client_id="app\udfff"), "`client_id` claim holds"),
        (claims(azp="app\x00"), "`azp` claim holds"),
        (claims(patient="p\x00"), "`patient` claim holds"),
        (claims(client_id={"name": "app"}), "`client_id` claim must be a string"),
        (claims(azp=7), "`azp` claim must be a string"),
    ],
)
def test_bad_claims_are_unauthorized(
    keys: dict[str, Any], verifier: TokenVerifier, payload: dict[str, Any], message: str
) -> None:
    with pytest.raises(Unauthorized, match=message):
        verifier.verify(sign(keys, payload))


def test_bad_signatures_and_algorithms_are_unauthorized(
    keys: dict[str, Any], verifier: TokenVerifier
) -> None:
    # signed by a key nobody trusts, under a trusted key id
    with pytest.raises(Unauthorized, match="signature"):
        verifier.verify(sign(keys, claims(), key="other"))
    # an unknown key id
    with pytest.raises(Unauthorized, match="key"):
        verifier.verify(sign(keys, claims(), kid="nope"))
    # alg=none
    unsigned = jwt.encode(claims(), None, algorithm="none")
    with pytest.raises(Unauthorized, match="algorithm"):
        verifier.verify(unsigned)
    # HS256 keyed with the public key (algorithm confusion)
    public_pem = (
        keys["rsa"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    confused = _hs256(claims(), public_pem)
    with pytest.raises(Unauthorized, match="algorithm"):
        verifier.verify(confused)
    # tampered payload
    header, _, signature = sign(keys, claims()).split(".")
    forged = jwt.utils.base64url_encode(
        json.dumps(claims(fhirUser="Patient/999")).encode()
    ).decode()
    with pytest.raises(Unauthorized):
        verifier.verify(f"{header}.{forged}.{signature}")
    with pytest.raises(Unauthorized, match="not a JWT"):
        verifier.verify("not-a-token")


def _hs256(payload: dict[str, Any], secret: bytes) -> str:
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'kid': 'rsa1'}).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def test_symmetric_algorithms_cannot_be_configured() -> None:
    with pytest.raises(ValueError, match="asymmetric"):
        TokenSettings(issuer=ISSUER, audience=AUDIENCE, jwks="x", algorithms=("RS256", "HS256"))


def test_bearer_header() -> None:
    assert bearer("Bearer abc") == "abc"
    for bad in (None, "", "Basic abc", "Bearer "):
        with pytest.raises(Unauthorized):
            bearer(bad)


def test_dev_token_verifies_against_the_dev_key(tmp_path: Path) -> None:
    jwks = ensure_dev_key(tmp_path)
    assert (tmp_path / "auth" / "signing-key.pem").stat().st_mode & 0o077 == 0
    token = dev_token(tmp_path, fhir_user="RelatedPerson/7", scope="user/*.cruds")
    verifier = TokenVerifier(
        TokenSettings(
            issuer=DEV_ISSUER, audience=DEV_AUDIENCE, jwks=str(jwks), algorithms=("ES256",)
        )
    )
    principal = verifier.verify(token)
    assert principal.fhir_user == "RelatedPerson/7"
    assert principal.scopes[0].permissions == frozenset("cruds")
    assert ensure_dev_key(tmp_path) == jwks  # the key is made once


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("patient/Observation.read", Scope("patient", "Observation", frozenset("rs"))),
        ("user/*.write", Scope("user", "*", frozenset("cud"))),
        ("system/*.*", Scope("system", "*", frozenset("cruds"))),
        ("user/Patient.rs", Scope("user", "Patient", frozenset("rs"))),
        (
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
            Scope(
                "patient",
                "Observation",
                frozenset("rs"),
                (
                    (
                        "category",
                        "http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
                    ),
                ),
            ),
        ),
        ("openid", None),
        ("launch/patient", None),
    ],
)
def test_scopes(text: str, expected: Scope | None) -> None:
    assert parse_scope(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "user/Observation.xyz",
        "user/Observation.sr",
        "patient/Observation.read?category=x",
        "user/observation.rs",
    ],
)
def test_bad_scopes(text: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(text)


def test_granted_narrows_by_type_and_permission() -> None:
    scopes = parse_scopes("patient/Observation.rs user/Patient.cruds openid")
    assert [s.resource_type for s in granted(scopes, "Observation", "r")] == ["Observation"]
    assert granted(scopes, "Observation", "c") == []
    assert [s.resource_type for s in granted(scopes, "Patient", "d")] == ["Patient"]
    assert granted(scopes, "Condition", "r") == []


def test_the_dev_token_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fhir_server.cli import main

    monkeypatch.setenv("FHIR_DATA_DIR", str(tmp_path))
    assert (
        main(["dev-token", "--fhir-user", "Patient/5", "--scope", "patient/*.rs", "--patient", "5"])
        == 0
    )
    token = capsys.readouterr().out.strip()
    jwks = tmp_path / "auth" / "jwks.json"
    verifier = TokenVerifier(
        TokenSettings(issuer=DEV_ISSUER, audience=DEV_AUDIENCE, jwks=str(jwks))
    )
    principal = verifier.verify(token)
    assert (principal.fhir_user, principal.patient) == ("Patient/5", "5")
