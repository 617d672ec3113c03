"""The Starlette adapter's pure pieces (fhir_server/oauth/server.py): who a request claims to be,
repeated parameters, which authentication each kind of client may use, the rendering of answers."""

from __future__ import annotations

from dataclasses import replace

import jwt
import orjson
from starlette.datastructures import FormData

from fhir_server.api.smart import endpoint_url
from fhir_server.oauth.server import (
    ASSERTION_TYPE,
    OAuthClient,
    claimed_client_id,
    conflicting_client_id,
    malformed,
    oauth_error,
    repeated,
    to_response,
)
from fhir_server.settings import Settings
from fhir_server.storage.oauth import Client


def test_the_claimed_client_is_the_assertions_subject_else_client_id() -> None:
    assertion = jwt.encode({"iss": "svc", "sub": "svc"}, "k" * 32, algorithm="HS256")
    both = FormData(
        [
            ("client_id", "other"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
        ]
    )
    assert claimed_client_id(both) == "svc"
    assert claimed_client_id(FormData([("client_id", "app")])) == "app"
    assert claimed_client_id(FormData([("client_id", "")])) is None
    garbage = FormData(
        [("client_assertion_type", ASSERTION_TYPE), ("client_assertion", "not-a-jwt")]
    )
    assert claimed_client_id(garbage) is None


def test_a_client_id_must_name_the_assertions_client() -> None:
    assertion = jwt.encode({"iss": "svc", "sub": "svc"}, "k" * 32, algorithm="HS256")
    with_assertion = [("client_assertion_type", ASSERTION_TYPE), ("client_assertion", assertion)]
    assert conflicting_client_id(FormData([("client_id", "other"), *with_assertion]))
    assert conflicting_client_id(FormData([("client_id", "svc"), *with_assertion])) is None
    assert conflicting_client_id(FormData(with_assertion)) is None
    assert conflicting_client_id(FormData([("client_id", "app")])) is None  # no assertion
    garbage = [("client_assertion_type", ASSERTION_TYPE), ("client_assertion", "not-a-jwt")]
    assert conflicting_client_id(FormData([("client_id", "app"), *garbage]))


def test_a_repeated_parameter_or_a_nul_character_is_found() -> None:
    assert repeated(FormData([("a", "1"), ("b", "2")])) is None
    assert repeated(FormData([("a", "1"), ("b", "2"), ("a", "1")])) == "a"
    assert malformed(FormData([("a", "1"), ("a", "2")])) == "`a` is repeated"
    assert malformed(FormData([("client_id", "x\x00y")])) == "the form holds a NUL character"
    assert malformed(FormData([("client_id", "app")])) is None


def test_public_clients_use_none_and_confidential_ones_private_key_jwt_only() -> None:
    public = Client("app", "app", "public", ("https://app.example/cb",), "patient/*.rs")
    confidential = replace(public, kind="confidential")
    assert OAuthClient(public, None).check_endpoint_auth_method("none", "token")
    assert not OAuthClient(public, None).check_endpoint_auth_method("private_key_jwt", "token")
    assert not OAuthClient(confidential, None).check_endpoint_auth_method("none", "token")
    assert OAuthClient(confidential, None).check_endpoint_auth_method("private_key_jwt", "token")
    for client in (public, confidential):
        assert not OAuthClient(client, None).check_client_secret("anything")
        assert not OAuthClient(client, None).check_redirect_uri("https://app.example/cb/")


def test_endpoints_are_at_the_origin_of_the_public_base() -> None:
    settings = replace(Settings(), base_url="https://fhir.example.org/r4/fhir")
    assert endpoint_url(settings, "/oauth/token") == "https://fhir.example.org/oauth/token"


def test_invalid_client_is_401_with_a_challenge_and_nothing_is_cached() -> None:
    response = to_response(oauth_error("invalid_client", 'bad "quoted" words'))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_client"')
    assert '"quoted"' not in response.headers["www-authenticate"]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    assert orjson.loads(response.body) == {
        "error": "invalid_client",
        "error_description": 'bad "quoted" words',
    }
    other = to_response(oauth_error("invalid_grant", "no"))
    assert other.status_code == 400 and "www-authenticate" not in other.headers
