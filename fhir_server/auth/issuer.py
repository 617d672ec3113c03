"""The keys of this server's own authorization server, and the tokens it signs with them.

A key set is a JWKS of private keys (`FHIR_OAUTH_KEYS`, or `oauth-keys.json` in the data
folder's `auth/`, made on first start): the first key signs, every key is published at the
JWKS endpoint, so tokens signed by a key being retired keep verifying until they expire.
Rotation (docs/smart.md): `fhir-server keys rotate` puts a new key first; `fhir-server keys
retire` drops the others once the longest token lifetime has passed.

Access tokens are JWTs that the server verifies through the same path as any identity provider's
(`tokens.TokenVerifier` with this set's public half): no second format, no shortcut.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt import PyJWK

KEYS_FILE = "oauth-keys.json"
PUBLIC_FILE = "oauth-jwks.json"
ALGORITHM = "RS256"  # what every OpenID Connect relying party must accept
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi")


def new_key() -> dict[str, Any]:
    """A fresh RSA 2048 signing key as a private JWK with a random `kid`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
    jwk.update({"kid": uuid.uuid4().hex, "use": "sig", "alg": ALGORITHM})
    return jwk


def public(jwk: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in jwk.items() if k not in _PRIVATE_MEMBERS}


def _write_private(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(document, handle, indent=2)


def keys_path(data_dir: Path, configured: Path | None) -> Path:
    return configured if configured is not None else data_dir / "auth" / KEYS_FILE


def load_or_create(path: Path) -> list[dict[str, Any]]:
    """The private JWKs of the key set at `path`, made (one key) when the file is missing."""
    if not path.exists():
        _write_private(path, {"keys": [new_key()]})
    keys = json.loads(path.read_text()).get("keys") or []
    if not keys or any(k.get("kty") != "RSA" or "d" not in k or "kid" not in k for k in keys):
        raise ValueError(f"`{path}` must be a JWKS of RSA private keys, each with a `kid`")
    return list(keys)


def rotate(path: Path) -> str:
    """Put a new signing key first (the others stay published); its `kid`."""
    keys = load_or_create(path)
    key = new_key()
    _write_private(path, {"keys": [key, *keys]})
    return str(key["kid"])


def retire(path: Path) -> list[str]:
    """Keep only the signing key; the `kid`s dropped."""
    keys = load_or_create(path)
    _write_private(path, {"keys": keys[:1]})
    return [str(k["kid"]) for k in keys[1:]]


@dataclass(frozen=True, slots=True)
class ServerKeys:
    keys: tuple[dict[str, Any], ...]

    @classmethod
    def load(cls, path: Path) -> ServerKeys:
        return cls(tuple(load_or_create(path)))

    @property
    def jwks(self) -> dict[str, Any]:
        """The public key set, as published."""
        return {"keys": [public(k) for k in self.keys]}

    def write_public(self, path: Path) -> Path:
        """The public set in a file, for the token verifier."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.jwks))
        return path

    def sign(self, claims: Mapping[str, Any]) -> str:
        signer = self.keys[0]
        key = PyJWK.from_dict(signer).key
        return jwt.encode(
            dict(claims), key, algorithm=ALGORITHM, headers={"kid": signer["kid"], "typ": "JWT"}
        )


def access_token_claims(
    *,
    issuer: str,
    audience: str,
    subject: str,
    client_id: str,
    scope: str,
    lifetime_seconds: int,
    fhir_user: str | None = None,
    patient: str | None = None,
    encounter: str | None = None,
    extra: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "client_id": client_id,
        "scope": scope,
        "iat": issued,
        "nbf": issued,
        "exp": issued + lifetime_seconds,
        "jti": uuid.uuid4().hex,
    }
    if fhir_user:
        claims["fhirUser"] = fhir_user
    if patient:
        claims["patient"] = patient
    if encounter:
        claims["encounter"] = encounter
    claims.update(extra or {})
    return claims


def id_token_claims(
    *,
    issuer: str,
    client_id: str,
    subject: str,
    lifetime_seconds: int,
    auth_time: float,
    fhir_user: str | None = None,
    nonce: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """An OpenID Connect ID token; `fhirUser` is absolute (SMART's `fhirUser` claim)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": client_id,
        "sub": subject,
        "iat": issued,
        "exp": issued + lifetime_seconds,
        "auth_time": int(auth_time),
    }
    if fhir_user:
        claims["fhirUser"] = f"{issuer}/{fhir_user}"
    if nonce:
        claims["nonce"] = nonce
    return claims
