"""SMART discovery: /fhir/.well-known/smart-configuration and the CapabilityStatement's security."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest

from capability.definitions import json_schema
from capability.statement import OAUTH_URIS, RESTFUL_SECURITY_SERVICE, capability_statement
from fhir_server.api.smart import smart_configuration
from fhir_server.settings import Settings
from tests.support.servers import LiveServer

IDP = "https://idp.example.org"
CONFIGURED = Settings(
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


def test_well_known_without_an_identity_provider(client: httpx.Client) -> None:
    """The default server: the development issuer, no endpoints, so no grant can be offered."""
    response = client.get(WELL_KNOWN)  # no Authorization header
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
    assert response.json()["issuer"] == "urn:fhir-server:dev"


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


def test_metadata_announces_smart_on_fhir(client: httpx.Client) -> None:
    statement = client.get("/metadata").json()
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
        Settings(auth_jwks="/etc/keys.json", auth_issuer=IDP, auth_token_url=f"{IDP}/token")
    )
    assert document["issuer"] == IDP
    assert "jwks_uri" not in document  # a file is not announced
    assert "authorization_endpoint" not in document
    assert document["grant_types_supported"] == ["client_credentials"]
    assert "launch-standalone" not in document["capabilities"]
    assert "sso-openid-connect" not in document["capabilities"]
    assert "client-confidential-asymmetric" in document["capabilities"]


def test_issuer_is_omitted_for_a_jwks_without_an_issuer() -> None:
    document = smart_configuration(Settings(auth_jwks=f"{IDP}/jwks.json"))
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
