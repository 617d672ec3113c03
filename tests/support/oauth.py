"""Helpers for the authorization server's tests: clients registered in the database, codes made
the way the authorization endpoint makes them, PKCE pairs, and client assertions signed with real
keys (RSA and EC, made with cryptography)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import jwt
import psycopg
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fhir_server.storage import oauth
from fhir_server.storage.sql import Connection

T = TypeVar("T")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
REDIRECT = "http://127.0.0.1:9/callback"


def run(database_url: str, work: Callable[[Connection], Awaitable[T]]) -> T:
    async def go() -> T:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            return await work(conn)

    return asyncio.run(go())


def now() -> datetime:
    return datetime.now(UTC)


def pkce() -> tuple[str, str]:
    """A code verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass
class Keypair:
    """A client's signing key and the public JWKS it registers."""

    private: Any
    algorithm: str
    kid: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def rsa(cls, algorithm: str = "RS384") -> Keypair:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm)

    @classmethod
    def ec(cls, algorithm: str = "ES384") -> Keypair:
        return cls(ec.generate_private_key(ec.SECP384R1()), algorithm)

    @property
    def jwks(self) -> dict[str, Any]:
        if self.algorithm.startswith("RS"):
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        else:
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        jwk.update({"kid": self.kid, "alg": self.algorithm, "use": "sig"})
        return {"keys": [jwk]}

    def assertion(self, client_id: str, audience: str, **overrides: Any) -> str:
        issued = int(time.time())
        claims: dict[str, Any] = {
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "exp": issued + 240,
            "iat": issued,
            "jti": uuid.uuid4().hex,
        }
        claims.update(overrides)
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers={"kid": self.kid})


def register(database_url: str, client: oauth.Client) -> oauth.Client:
    assert run(database_url, lambda conn: oauth.add_client(conn, client, now()))
    return client


def public_client(database_url: str, scope: str, **kw: Any) -> oauth.Client:
    return register(
        database_url,
        oauth.Client(
            client_id=f"app-{uuid.uuid4().hex[:10]}",
            name="a patient app",
            kind="public",
            redirect_uris=(REDIRECT,),
            scope=scope,
            **kw,
        ),
    )


def backend_client(
    database_url: str,
    keys: Keypair,
    scope: str = "system/*.rs system/Patient.rs",
    *,
    jwks_uri: str | None = None,
    grant_types: tuple[str, ...] = ("client_credentials",),
) -> oauth.Client:
    return register(
        database_url,
        oauth.Client(
            client_id=f"backend-{uuid.uuid4().hex[:10]}",
            name="a backend service",
            kind="confidential",
            redirect_uris=(),
            scope=scope,
            launch_types=(),
            grant_types=grant_types,
            jwks=None if jwks_uri else keys.jwks,
            jwks_uri=jwks_uri,
        ),
    )


def local_account(database_url: str, fhir_user: str) -> str:
    """A local account (with a password hash no password matches): its subject."""
    username = f"user-{uuid.uuid4().hex[:10]}"
    run(
        database_url,
        lambda conn: oauth.put_user(conn, username, "not-a-hash", fhir_user, now()),
    )
    return oauth.local_subject(username)


def make_code(
    database_url: str,
    client_id: str,
    scope: str,
    challenge: str | None,
    *,
    patient: str | None = None,
    fhir_user: str | None = None,
    subject: str | None = None,
    nonce: str | None = None,
    expires_in: float = 60,
    redirect_uri: str | None = REDIRECT,
    claims: dict[str, Any] | None = None,
) -> str:
    """A code as the authorization endpoint saves it; without `subject`, for a local account made
    for it (a grant whose local account is gone is refused)."""
    code = secrets.token_urlsafe(32)
    issued = now()
    if subject is None:
        subject = local_account(database_url, fhir_user or "Patient/someone")
    record = oauth.Code(
        grant=oauth.Grant(
            client_id=client_id,
            scope=scope,
            subject=subject,
            fhir_user=fhir_user,
            patient=patient,
            claims=claims or {},
        ),
        redirect_uri=redirect_uri,
        code_challenge=challenge,
        code_challenge_method="S256" if challenge else None,
        nonce=nonce,
        auth_time=issued,
        expires_at=issued + timedelta(seconds=expires_in),
    )
    run(database_url, lambda conn: oauth.save_code(conn, code, record))
    return code
