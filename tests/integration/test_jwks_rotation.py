"""A JWKS served over HTTP, as an identity provider serves it: fetched, cached, and fetched again
when a token names a key id it does not know (key rotation)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from fhir_server.auth.tokens import TokenSettings, TokenVerifier
from fhir_server.errors import Unauthorized

ISSUER = "https://idp.example.org"
AUDIENCE = "https://fhir.example.org/fhir"


class Provider:
    """An identity provider's JWKS endpoint that counts its fetches."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                body = json.dumps(
                    {
                        "keys": [
                            {
                                **json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key())),
                                "kid": kid,
                                "use": "sig",
                            }
                            for kid, k in provider.keys.items()
                        ]
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    def add_key(self, kid: str) -> rsa.RSAPrivateKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keys[kid] = key
        return key

    def token(self, kid: str, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "u",
            "exp": now + 300,
            "scope": "system/*.rs",
            **claims,
        }
        return jwt.encode(payload, self.keys[kid], algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def provider() -> Iterator[Provider]:
    p = Provider()
    thread = threading.Thread(target=p.server.serve_forever, daemon=True)
    thread.start()
    yield p
    p.server.shutdown()
    p.server.server_close()


def test_keys_are_fetched_once_and_again_on_rotation(provider: Provider) -> None:
    provider.add_key("2026-01")
    settings = TokenSettings(
        issuer=ISSUER, audience=AUDIENCE, jwks=provider.url, jwks_refresh_cooldown_seconds=0.5
    )
    verifier = TokenVerifier(settings)
    assert verifier.verify(provider.token("2026-01", sub="a")).subject == "a"
    assert verifier.verify(provider.token("2026-01", sub="b")).subject == "b"
    assert provider.fetches == 1  # cached
    # the provider rotates: a new key signs new tokens, and the verifier fetches it (once the
    # cooldown since the last fetch is over; the default is 30 s)
    provider.add_key("2026-02")
    time.sleep(0.6)
    assert verifier.verify(provider.token("2026-02", sub="c")).subject == "c"
    assert provider.fetches == 2
    # a key the provider never published is refused
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60},
        stranger,
        algorithm="RS256",
        headers={"kid": "2026-03"},
    )
    with pytest.raises(Unauthorized):
        verifier.verify(forged)
