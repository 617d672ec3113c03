"""A small but real OpenID Connect provider over HTTP, for the tests of upstream sign-in
(fhir_server/web/upstream.py): a test double of an external system, not a mock of ours.

It serves discovery, its JWKS, an authorization endpoint that signs in the configured user at
once (no page) and redirects back with a code, and a token endpoint that checks the code (single
use), the client secret (Basic or form), the redirect URI and the PKCE S256 verifier, and answers
an ID token signed RS256 with a real RSA key (PyJWT). Tests steer it through attributes:
`subject` (who signs in), `deny` (answer `error=access_denied`), `token_error` (the token
endpoint refuses), `claims` (overrides of the ID token's claims, e.g. another `aud`), `signing` ("rsa", "foreign":
another RSA key under the same key id, "hs256": HMAC keyed with the client secret).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.support.servers import free_port

CLIENT_ID = "fhir-server"
CLIENT_SECRET = "s3cret:with/odd&chars-and-long-enough-for-an-hmac-key"
KEY_ID = "provider-key-1"


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str
    subject: str


class OidcProvider:
    def __init__(self, *, client_auth: str = "client_secret_basic") -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.client_auth = client_auth
        self.redirect_uris: set[str] = set()
        self.algorithms = ["RS256"]  # advertised for ID tokens
        self.subject = "alice"
        self.deny = False
        self.token_error = False
        self.claims: dict[str, Any] = {}
        self.signing = "rsa"
        self.key_id = KEY_ID
        self.token_requests = 0
        self._codes: dict[str, _Code] = {}
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(RSAAlgorithm.to_jwk(self._key.public_key()))
        self.jwks = {"keys": [{**public, "kid": KEY_ID, "use": "sig", "alg": "RS256"}]}
        app = Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self.discovery),
                Route("/jwks", self.keys),
                Route("/authorize", self.authorize),
                Route("/token", self.token, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> OidcProvider:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test OIDC provider did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def reset(self) -> None:
        self.subject, self.deny, self.token_error, self.claims = "alice", False, False, {}
        self.signing, self.algorithms = "rsa", ["RS256"]

    def rotate(self) -> None:
        """A new signing key under a new key id, published beside the old one."""
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_id = f"provider-key-{len(self.jwks['keys']) + 1}"
        public = json.loads(RSAAlgorithm.to_jwk(self._key.public_key()))
        self.jwks = {"keys": [*self.jwks["keys"], {**public, "kid": self.key_id, "alg": "RS256"}]}

    def sign(self, claims: dict[str, Any]) -> str:
        headers = {"kid": self.key_id}
        if self.signing == "hs256":
            return jwt.encode(claims, CLIENT_SECRET, algorithm="HS256", headers=headers)
        key = self._foreign if self.signing == "foreign" else self._key
        return jwt.encode(claims, key, algorithm="RS256", headers=headers)

    async def discovery(self, request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": self.algorithms,
                "token_endpoint_auth_methods_supported": [self.client_auth],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def keys(self, request: Request) -> Response:
        return JSONResponse(self.jwks)

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        redirect_uri = q.get("redirect_uri", "")
        if q.get("client_id") != CLIENT_ID or redirect_uri not in self.redirect_uris:
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        state = q.get("state", "")
        if self.deny:
            query = urlencode({"error": "access_denied", "state": state})
            return RedirectResponse(f"{redirect_uri}?{query}", status_code=302)
        if (
            q.get("response_type") != "code"
            or q.get("code_challenge_method") != "S256"
            or not q.get("code_challenge")
            or "openid" not in q.get("scope", "").split()
            or not q.get("nonce")
        ):
            query = urlencode({"error": "invalid_request", "state": state})
            return RedirectResponse(f"{redirect_uri}?{query}", status_code=302)
        code = secrets.token_urlsafe(24)
        self._codes[code] = _Code(
            CLIENT_ID, redirect_uri, q["code_challenge"], q["nonce"], self.subject
        )
        query = urlencode({"code": code, "state": state})
        return RedirectResponse(f"{redirect_uri}?{query}", status_code=302)

    def _client(self, request: Request, form: dict[str, str]) -> str | None:
        header = request.headers.get("authorization", "")
        if self.client_auth == "client_secret_basic" and header.startswith("Basic "):
            decoded = base64.b64decode(header[6:]).decode()
            client_id, _, secret = decoded.partition(":")
            client_id, secret = unquote(client_id), unquote(secret)
        elif self.client_auth == "client_secret_post" and not header:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        else:
            return None
        if client_id != CLIENT_ID or not secrets.compare_digest(secret, CLIENT_SECRET):
            return None
        return client_id

    async def token(self, request: Request) -> Response:
        self.token_requests += 1
        form = dict(parse_qsl((await request.body()).decode()))
        if self._client(request, form) is None:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        if self.token_error:
            return JSONResponse({"error": "server_error"}, status_code=500)
        code = self._codes.pop(form.get("code", ""), None)
        if code is None or form.get("grant_type") != "authorization_code":
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        verifier = form.get("code_verifier", "")
        digest = hashlib.sha256(verifier.encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if form.get("redirect_uri") != code.redirect_uri or challenge != code.challenge:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": code.subject,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "auth_time": now - 5,
            "nonce": code.nonce,
            **self.claims,
        }
        return JSONResponse(
            {
                "access_token": secrets.token_urlsafe(24),
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": self.sign(claims),
            }
        )
