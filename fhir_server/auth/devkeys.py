"""A local signing key for the embedded default, so a newcomer can try every role.

`fhir-server dev-token` signs tokens with a key kept in the data folder (`auth/`), and a server
with no `FHIR_AUTH_JWKS` trusts that key's public half. Never for production: anyone who can read
the data folder can mint tokens.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

DEV_ISSUER = "urn:fhir-server:dev"
DEV_AUDIENCE = "urn:fhir-server:dev"
_KEY_FILE = "signing-key.pem"
_JWKS_FILE = "jwks.json"


def _folder(data_dir: Path) -> Path:
    return data_dir / "auth"


def ensure_dev_key(data_dir: Path) -> Path:
    """Create the key pair once (private key readable by the owner only); the JWKS file path."""
    folder = _folder(data_dir)
    jwks_path = folder / _JWKS_FILE
    if jwks_path.exists() and (folder / _KEY_FILE).exists():
        return jwks_path
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(folder / _KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    public.update({"kid": uuid.uuid4().hex, "use": "sig", "alg": "ES256"})
    jwks_path.write_text(json.dumps({"keys": [public]}, indent=2))
    return jwks_path


def dev_token(
    data_dir: Path,
    *,
    fhir_user: str | None,
    scope: str,
    patient: str | None = None,
    lifetime_seconds: int = 3600,
    extra: dict[str, Any] | None = None,
) -> str:
    """A token signed with the local key, as an identity provider would issue it."""
    jwks_path = ensure_dev_key(data_dir)
    kid = json.loads(jwks_path.read_text())["keys"][0]["kid"]
    key = (_folder(data_dir) / _KEY_FILE).read_bytes()
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": DEV_ISSUER,
        "aud": DEV_AUDIENCE,
        "sub": fhir_user or "system-client",
        "iat": now,
        "nbf": now,
        "exp": now + lifetime_seconds,
        "scope": scope,
        "client_id": "fhir-server-dev",
        **({"fhirUser": fhir_user} if fhir_user else {}),
        **({"patient": patient} if patient else {}),
        **(extra or {}),
    }
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})
