"""SMART discovery: /fhir/.well-known/smart-configuration and the CapabilityStatement's security."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import jwt
import pytest
from jwt import PyJWKSet

from capability.definitions import json_schema
from capability.statement import OAUTH_URIS, RESTFUL_SECURITY_SERVICE, capability_statement
from fhir_server.api.smart import openid_configuration, smart_configuration
from fhir_server.auth import issuer
from fhir_server.settings import Settings
from tests.support.servers import LiveServer
from tests.support.tokens import KEYS_DIR

IDP = "https://idp.example.org"
CONFIGURED = Settings(
    oauth_enabled=False,
    auth_jwks=f"{IDP}/jwks.json",
    auth_issuer=IDP,
    auth_audience="https://fhir.example.org/fhir",
    auth_authorize_url=f"{IDP}/authorize",
    auth_token_url=f"{IDP}/token",
    auth_revocation_url=f"{IDP}/revoke",
    auth_introspection_url=f"{IDP}/introspect",
    auth_management_url=f"{IDP}/manage",
)
SCOPES = [
    "openid",
    "fhirUser",
    "launch/patient",
    "offline_access",
    "patient/*.rs",
    "user/*.cruds",
    "system/*.cruds",
    "patient/*.read",
    "user/*.read",
    "user/*.write",
    "system/*.read",
    "system/*.write",
]
WELL_KNOWN = "/.well-known/smart-configuration"


@pytest.fixture(scope="module")
def configured_server(database_url: str) -> Iterator[LiveServer]:
    with LiveServer(CONFIGURED, database_url) as server:
        yield server


@pytest.fixture(scope="module")
def off_server(database_url: str) -> Iterator[LiveServer]:
    """`FHIR_OAUTH=off` and no identity provider: the development key only."""
    with LiveServer(Settings(oauth_enabled=False), database_url) as server:
        yield server


@pytest.fixture
def off(off_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{off_server.origin}/fhir", timeout=30) as c:
        yield c


def _security_service(statement: dict[str, Any]) -> list[dict[str, str]]:
    return [c for s in statement["rest"][0]["security"]["service"] for c in s["coding"]]


def _oauth_uris(statement: dict[str, Any]) -> dict[str, str]:
    [extension] = [
        e for e in statement["rest"][0]["security"].get("extension", []) if e["url"] == OAUTH_URIS
    ]
    return {sub["url"]: sub["valueUri"] for sub in extension["extension"]}


def _valid(statement: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft6Validator(
        {"$ref": "#/definitions/CapabilityStatement", **json_schema()}
    )
    return [e.message for e in validator.iter_errors(statement)]


# --- over HTTP -------------------------------------------------------------------------------


def test_well_known_without_an_identity_provider(off: httpx.Client) -> None:
    """The authorization server off, no identity provider: the development issuer, no
    endpoints, so no grant can be offered."""
    response = off.get(WELL_KNOWN)  # no Authorization header
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["issuer"] == "urn:fhir-server:dev"
    for absent in (
        "jwks_uri",
        "authorization_endpoint",
        "token_endpoint",
        "revocation_endpoint",
        "introspection_endpoint",
        "management_endpoint",
    ):
        assert absent not in document
    assert document["grant_types_supported"] == []
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["response_types_supported"] == ["code"]
    assert document["scopes_supported"] == SCOPES
    assert set(document["capabilities"]) == {
        "permission-patient",
        "permission-user",
        "permission-v1",
        "permission-v2",
    }


def test_well_known_is_public_and_ignores_fhir_format_negotiation(client: httpx.Client) -> None:
    """Not a FHIR interaction: no token, and an XML Accept header does not get 406."""
    response = client.get(
        WELL_KNOWN, headers={"Accept": "application/fhir+xml", "Authorization": "Bearer nonsense"}
    )
    assert response.status_code == 200
    assert response.json()["issuer"] == Settings().public_base  # the own authorization server


def test_well_known_with_an_identity_provider(configured_server: LiveServer) -> None:
    response = httpx.get(f"{configured_server.origin}/fhir{WELL_KNOWN}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "issuer": IDP,
        "jwks_uri": f"{IDP}/jwks.json",
        "authorization_endpoint": f"{IDP}/authorize",
        "token_endpoint": f"{IDP}/token",
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": [
            "launch-standalone",
            "client-public",
            "context-standalone-patient",
            "client-confidential-asymmetric",
            "permission-patient",
            "permission-user",
            "permission-v1",
            "permission-v2",
            "sso-openid-connect",
        ],
        "revocation_endpoint": f"{IDP}/revoke",
        "introspection_endpoint": f"{IDP}/introspect",
        "management_endpoint": f"{IDP}/manage",
    }


def test_metadata_announces_smart_on_fhir(off: httpx.Client) -> None:
    statement = off.get("/metadata").json()
    assert {"system": RESTFUL_SECURITY_SERVICE, "code": "SMART-on-FHIR"}.items() <= (
        _security_service(statement)[0].items()
    )
    security = statement["rest"][0]["security"]
    assert "extension" not in security  # no authorize URL configured
    assert "/.well-known/smart-configuration" in security["description"]
    assert _valid(statement) == []


def test_metadata_carries_the_oauth_uris(configured_server: LiveServer) -> None:
    statement = httpx.get(f"{configured_server.origin}/fhir/metadata").json()
    assert _security_service(statement)[0]["code"] == "SMART-on-FHIR"
    assert _oauth_uris(statement) == {
        "authorize": f"{IDP}/authorize",
        "token": f"{IDP}/token",
        "manage": f"{IDP}/manage",
        "introspect": f"{IDP}/introspect",
        "revoke": f"{IDP}/revoke",
    }
    assert _valid(statement) == []


# --- the pure builders -------------------------------------------------------------------------


def _statement(oauth: dict[str, str | None] | None) -> dict[str, Any]:
    return capability_statement(
        base_url="https://fhir.example.org/fhir", update_create=True, date="2024-01-01", oauth=oauth
    )


def test_capability_statement_oauth_uris_extension() -> None:
    statement = _statement({"authorize": f"{IDP}/a", "token": f"{IDP}/t", "revoke": None})
    extension = statement["rest"][0]["security"]["extension"][0]
    assert extension == {
        "url": OAUTH_URIS,
        "extension": [
            {"url": "authorize", "valueUri": f"{IDP}/a"},
            {"url": "token", "valueUri": f"{IDP}/t"},
        ],
    }
    assert _valid(statement) == []


@pytest.mark.parametrize("oauth", [None, {}, {"authorize": None}, {"token": f"{IDP}/t"}])
def test_capability_statement_without_an_authorize_url(oauth: dict[str, str | None]) -> None:
    """The service coding always; the extension needs `authorize` (1..1 in its profile)."""
    security = _statement(oauth)["rest"][0]["security"]
    assert "extension" not in security
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    assert security["cors"] is False


def test_capability_statement_refuses_an_unknown_oauth_uri() -> None:
    with pytest.raises(ValueError, match="authorise"):
        _statement({"authorise": f"{IDP}/a"})


def test_client_credentials_only() -> None:
    """A token endpoint without an authorization endpoint: backend services only."""
    document = smart_configuration(
        Settings(
            oauth_enabled=False,
            auth_jwks="/etc/keys.json",
            auth_issuer=IDP,
            auth_token_url=f"{IDP}/token",
        )
    )
    assert document["issuer"] == IDP
    assert "jwks_uri" not in document  # a file is not announced
    assert "authorization_endpoint" not in document
    assert document["grant_types_supported"] == ["client_credentials"]
    assert "launch-standalone" not in document["capabilities"]
    assert "sso-openid-connect" not in document["capabilities"]
    assert "client-confidential-asymmetric" in document["capabilities"]


def test_issuer_is_omitted_for_a_jwks_without_an_issuer() -> None:
    document = smart_configuration(Settings(oauth_enabled=False, auth_jwks=f"{IDP}/jwks.json"))
    assert "issuer" not in document
    assert document["jwks_uri"] == f"{IDP}/jwks.json"


def test_settings_from_env() -> None:
    settings = Settings.from_env(
        {
            "FHIR_AUTH_AUTHORIZE_URL": f"{IDP}/authorize",
            "FHIR_AUTH_TOKEN_URL": f"{IDP}/token",
            "FHIR_AUTH_REVOCATION_URL": f"{IDP}/revoke",
            "FHIR_AUTH_INTROSPECTION_URL": "",
        }
    )
    assert settings.auth_authorize_url == f"{IDP}/authorize"
    assert settings.auth_token_url == f"{IDP}/token"
    assert settings.auth_revocation_url == f"{IDP}/revoke"
    assert settings.auth_introspection_url is None
    assert settings.auth_management_url is None


# --- the server's own authorization server (FHIR_OAUTH on, the default) ----------------------

OWN_CAPABILITIES = [
    "launch-ehr",
    "launch-standalone",
    "client-public",
    "client-confidential-asymmetric",
    "context-ehr-patient",
    "context-standalone-patient",
    "permission-v1",
    "permission-v2",
    "permission-patient",
    "permission-user",
    "permission-offline",
    "sso-openid-connect",
    "authorize-post",
]
OWN_SCOPES = [
    "openid",
    "fhirUser",
    "launch",
    "launch/patient",
    "offline_access",
    "online_access",
    "patient/*.cruds",
    "user/*.cruds",
    "system/*.cruds",
    "patient/*.rs",
    "user/*.rs",
    "system/*.rs",
    "patient/*.read",
    "patient/*.write",
    "user/*.read",
    "user/*.write",
    "system/*.read",
    "system/*.write",
]


@pytest.fixture(scope="module")
def own_server(database_url: str) -> Iterator[LiveServer]:
    """The authorization server on, an identity provider configured too: its own endpoints
    are the ones announced."""
    settings = Settings(
        auth_jwks=f"{IDP}/jwks.json",
        auth_issuer=IDP,
        auth_audience="https://fhir.example.org/fhir",
        auth_authorize_url=f"{IDP}/authorize",
        auth_token_url=f"{IDP}/token",
        data_dir=KEYS_DIR,
    )
    with LiveServer(settings, database_url, fixed_base=True) as server:
        yield server


def test_own_smart_configuration(own_server: LiveServer) -> None:
    at = own_server.origin
    response = httpx.get(f"{at}/fhir{WELL_KNOWN}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "public, max-age=300"
    document = response.json()
    assert document == {
        "issuer": f"{at}/fhir",
        "jwks_uri": f"{at}/oauth/jwks",
        "authorization_endpoint": f"{at}/oauth/authorize",
        "token_endpoint": f"{at}/oauth/token",
        "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "registration_endpoint": f"{at}/oauth/register",
        "scopes_supported": OWN_SCOPES,
        "response_types_supported": ["code"],
        "management_endpoint": f"{at}/account",
        "introspection_endpoint": f"{at}/oauth/introspect",
        "revocation_endpoint": f"{at}/oauth/revoke",
        "code_challenge_methods_supported": ["S256"],
        "capabilities": OWN_CAPABILITIES,
    }
    assert "plain" not in document["code_challenge_methods_supported"]
    assert "client_secret_basic" not in document["token_endpoint_auth_methods_supported"]


def test_own_openid_configuration(own_server: LiveServer) -> None:
    at = own_server.origin
    response = httpx.get(f"{at}/fhir/.well-known/openid-configuration")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert document == {
        "issuer": f"{at}/fhir",
        "authorization_endpoint": f"{at}/oauth/authorize",
        "token_endpoint": f"{at}/oauth/token",
        "jwks_uri": f"{at}/oauth/jwks",
        "registration_endpoint": f"{at}/oauth/register",
        "scopes_supported": OWN_SCOPES,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "fhirUser"],
        "code_challenge_methods_supported": ["S256"],
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
    }
    assert "userinfo_endpoint" not in document
    # OpenID Connect Discovery 4.3: the issuer of the document is the one it was fetched from
    assert f"{document['issuer']}/.well-known/openid-configuration" == str(response.url)


def test_jwks_publishes_the_public_signing_keys(own_server: LiveServer) -> None:
    response = httpx.get(f"{own_server.origin}/oauth/jwks")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/jwk-set+json"
    assert response.headers["cache-control"] == "public, max-age=300"
    published = response.json()
    keys = issuer.ServerKeys.load(issuer.keys_path(KEYS_DIR, None))
    assert published == keys.jwks
    assert [k["kid"] for k in published["keys"]] == [k["kid"] for k in keys.keys]
    for key in published["keys"]:
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)
    # a token the server signs verifies against what it publishes, and only against that
    token = keys.sign({"iss": f"{own_server.origin}/fhir", "sub": "x", "aud": "y"})
    header = jwt.get_unverified_header(token)
    key = PyJWKSet.from_dict(published)[header["kid"]]
    claims = jwt.decode(token, key.key, algorithms=["RS256"], audience="y")
    assert claims["sub"] == "x"


def test_metadata_carries_the_own_oauth_uris(own_server: LiveServer) -> None:
    at = own_server.origin
    statement = httpx.get(f"{at}/fhir/metadata").json()
    assert _security_service(statement)[0]["code"] == "SMART-on-FHIR"
    assert _oauth_uris(statement) == {
        "authorize": f"{at}/oauth/authorize",
        "token": f"{at}/oauth/token",
        "register": f"{at}/oauth/register",
        "manage": f"{at}/account",
        "introspect": f"{at}/oauth/introspect",
        "revoke": f"{at}/oauth/revoke",
    }
    assert [e["url"] for e in statement["rest"][0]["security"]["extension"][0]["extension"]] == [
        "authorize",
        "token",
        "register",
        "manage",
        "introspect",
        "revoke",
    ]
    assert _valid(statement) == []


def test_off_serves_neither_openid_discovery_nor_keys(off: httpx.Client) -> None:
    for url in ("/.well-known/openid-configuration", "../oauth/jwks"):
        response = off.get(url)
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"
    # nor the registration and launch endpoints
    for path in ("/oauth/register", "/oauth/launch"):
        response = httpx.post(f"{str(off.base_url).removesuffix('/fhir/')}{path}", json={})
        assert response.status_code in (404, 405)


def test_own_documents_follow_the_public_base() -> None:
    """Endpoints sit at the origin of FHIR_BASE_URL, whatever its path."""
    settings = Settings(base_url="https://ehr.example.org:8443/api/fhir")
    smart = smart_configuration(settings)
    assert smart["issuer"] == "https://ehr.example.org:8443/api/fhir"
    assert smart["token_endpoint"] == "https://ehr.example.org:8443/oauth/token"
    assert smart["jwks_uri"] == "https://ehr.example.org:8443/oauth/jwks"
    oidc = openid_configuration(settings)
    assert oidc["issuer"] == smart["issuer"]
    assert oidc["authorization_endpoint"] == smart["authorization_endpoint"]
