"""Discovery: SMART App Launch 2.0 `GET /fhir/.well-known/smart-configuration`, OpenID Connect
`GET /fhir/.well-known/openid-configuration`, and the authorization server's public keys
`GET /oauth/jwks`.

Public (no token, no format negotiation): a client reads them before it has a token.

With the server's own authorization server on (`FHIR_OAUTH`, the default), the documents announce
its endpoints, all absolute URLs at the origin of `settings.public_base` (the issuer of its
tokens), and what it supports (docs/smart-admin.md#discovery).

With `FHIR_OAUTH=off`, the SMART document announces the external identity provider's endpoints
from the settings and what that provider and this server can do together. Fields that depend on
an endpoint follow it: without `FHIR_AUTH_AUTHORIZE_URL` there is no `authorization_endpoint`, no
`authorization_code` grant and none of the capabilities that need a user at an authorization
page; without `FHIR_AUTH_TOKEN_URL` there is no grant at all (tokens then come from elsewhere,
e.g. `fhir-server dev-token`). OpenID Connect discovery and the JWKS are then the provider's own
business: 404 here.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import orjson
from fastapi import FastAPI, Request, Response

from fhir_server.api.deps import runtime
from fhir_server.auth import issuer as server_issuer
from fhir_server.auth.devkeys import DEV_ISSUER
from fhir_server.settings import Settings

PATH = "/fhir/.well-known/smart-configuration"
OPENID_PATH = "/fhir/.well-known/openid-configuration"
JWKS_PATH = "/oauth/jwks"
# The authorization server's endpoints, at the origin of the public FHIR base.
ENDPOINTS: dict[str, str] = {
    "authorization_endpoint": "/oauth/authorize",
    "token_endpoint": "/oauth/token",
    "introspection_endpoint": "/oauth/introspect",
    "revocation_endpoint": "/oauth/revoke",
    "registration_endpoint": "/oauth/register",
    "management_endpoint": "/account",
}
OWN_GRANT_TYPES: tuple[str, ...] = ("authorization_code", "refresh_token", "client_credentials")
# Public clients (PKCE) and backend services with signed client assertions (RFC 7523); no
# shared secrets.
OWN_AUTH_METHODS: tuple[str, ...] = ("none", "private_key_jwt")
# What a client may sign its assertion with (SMART Backend Services: RS384 and ES384).
ASSERTION_ALGORITHMS: tuple[str, ...] = ("RS384", "ES384")
OWN_CAPABILITIES: tuple[str, ...] = (
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
)
OWN_SCOPES: tuple[str, ...] = (
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
)
# What the ID token says (OpenID Connect Core 2, SMART's `fhirUser`).
ID_TOKEN_CLAIMS: tuple[str, ...] = (
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "fhirUser",
)

TOKEN_ENDPOINT_AUTH_METHODS: tuple[str, ...] = ("private_key_jwt", "client_secret_basic")
SCOPES: tuple[str, ...] = (
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
)
RESPONSE_TYPES: tuple[str, ...] = ("code",)
# PKCE with S256 only: SMART 2.0 forbids offering `plain`.
CODE_CHALLENGE_METHODS: tuple[str, ...] = ("S256",)
# Scope syntaxes this server understands, whichever grant issued the token.
PERMISSIONS: tuple[str, ...] = (
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
)
# What needs a user at the authorization endpoint.
AUTHORIZE_CAPABILITIES: tuple[str, ...] = (
    "launch-standalone",
    "client-public",
    "context-standalone-patient",
)


def _jwks_url(settings: Settings) -> str | None:
    jwks = settings.auth_jwks
    return jwks if jwks is not None and jwks.startswith(("https://", "http://")) else None


def _issuer(settings: Settings) -> str | None:
    if settings.auth_issuer is not None:
        return settings.auth_issuer
    # Without a JWKS the development key is trusted, and its tokens carry the development issuer.
    return DEV_ISSUER if settings.auth_jwks is None else None


def origin(settings: Settings) -> str:
    """`scheme://host[:port]` of the public FHIR base."""
    parts = urlsplit(settings.public_base)
    return f"{parts.scheme}://{parts.netloc}"


def own_endpoints(settings: Settings) -> dict[str, str]:
    """The authorization server's endpoints, absolute."""
    at = origin(settings)
    return {name: f"{at}{path}" for name, path in ENDPOINTS.items()}


def oauth_uris(settings: Settings) -> dict[str, str | None]:
    """The CapabilityStatement's oauth-uris: the authorization server's own when it is on, else
    the identity provider's from the settings."""
    if settings.oauth_enabled:
        own = own_endpoints(settings)
        return {
            "authorize": own["authorization_endpoint"],
            "token": own["token_endpoint"],
            "register": own["registration_endpoint"],
            "manage": own["management_endpoint"],
            "introspect": own["introspection_endpoint"],
            "revoke": own["revocation_endpoint"],
        }
    return {
        "authorize": settings.auth_authorize_url,
        "token": settings.auth_token_url,
        "manage": settings.auth_management_url,
        "introspect": settings.auth_introspection_url,
        "revoke": settings.auth_revocation_url,
    }


def own_smart_configuration(settings: Settings) -> dict[str, Any]:
    """The SMART document of the server's own authorization server."""
    endpoints = own_endpoints(settings)
    return {
        "issuer": settings.public_base,
        "jwks_uri": f"{origin(settings)}{JWKS_PATH}",
        "authorization_endpoint": endpoints["authorization_endpoint"],
        "token_endpoint": endpoints["token_endpoint"],
        "token_endpoint_auth_methods_supported": list(OWN_AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "grant_types_supported": list(OWN_GRANT_TYPES),
        "registration_endpoint": endpoints["registration_endpoint"],
        "scopes_supported": list(OWN_SCOPES),
        "response_types_supported": list(RESPONSE_TYPES),
        "management_endpoint": endpoints["management_endpoint"],
        "introspection_endpoint": endpoints["introspection_endpoint"],
        "revocation_endpoint": endpoints["revocation_endpoint"],
        "code_challenge_methods_supported": list(CODE_CHALLENGE_METHODS),
        "capabilities": list(OWN_CAPABILITIES),
    }


def openid_configuration(settings: Settings) -> dict[str, Any]:
    """OpenID Connect Discovery 1.0 of the server's own authorization server (no userinfo
    endpoint: the ID token carries what a SMART app needs, `fhirUser`)."""
    endpoints = own_endpoints(settings)
    return {
        "issuer": settings.public_base,
        "authorization_endpoint": endpoints["authorization_endpoint"],
        "token_endpoint": endpoints["token_endpoint"],
        "jwks_uri": f"{origin(settings)}{JWKS_PATH}",
        "registration_endpoint": endpoints["registration_endpoint"],
        "scopes_supported": list(OWN_SCOPES),
        "response_types_supported": list(RESPONSE_TYPES),
        "response_modes_supported": ["query"],
        "grant_types_supported": list(OWN_GRANT_TYPES),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [server_issuer.ALGORITHM],
        "token_endpoint_auth_methods_supported": list(OWN_AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "claims_supported": list(ID_TOKEN_CLAIMS),
        "code_challenge_methods_supported": list(CODE_CHALLENGE_METHODS),
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
    }


def smart_configuration(settings: Settings) -> dict[str, Any]:
    """The discovery document for these settings."""
    if settings.oauth_enabled:
        return own_smart_configuration(settings)
    issuer = _issuer(settings)
    jwks_uri = _jwks_url(settings)
    authorize = settings.auth_authorize_url
    token = settings.auth_token_url

    grants: list[str] = []
    capabilities: list[str] = []
    if authorize is not None and token is not None:
        grants.append("authorization_code")
        capabilities.extend(AUTHORIZE_CAPABILITIES)
    if token is not None:
        grants.append("client_credentials")
        capabilities.append("client-confidential-asymmetric")
    capabilities.extend(PERMISSIONS)
    # SMART requires `issuer` and `jwks_uri` of a server that offers OpenID Connect sign-in.
    if "authorization_code" in grants and issuer is not None and jwks_uri is not None:
        capabilities.append("sso-openid-connect")

    document: dict[str, Any] = {}
    if issuer is not None:
        document["issuer"] = issuer
    if jwks_uri is not None:
        document["jwks_uri"] = jwks_uri
    if authorize is not None:
        document["authorization_endpoint"] = authorize
    if token is not None:
        document["token_endpoint"] = token
    document.update(
        {
            "token_endpoint_auth_methods_supported": list(TOKEN_ENDPOINT_AUTH_METHODS),
            "grant_types_supported": grants,
            "scopes_supported": list(SCOPES),
            "response_types_supported": list(RESPONSE_TYPES),
            "code_challenge_methods_supported": list(CODE_CHALLENGE_METHODS),
            "capabilities": capabilities,
        }
    )
    optional = (
        ("revocation_endpoint", settings.auth_revocation_url),
        ("introspection_endpoint", settings.auth_introspection_url),
        ("management_endpoint", settings.auth_management_url),
    )
    document.update({name: url for name, url in optional if url is not None})
    return document


# Discovery documents change only with the configuration: clients may keep them a while.
_DOCUMENT_CACHE = "public, max-age=300"
# Keys change at a rotation, which publishes the new key before it signs anything (and a
# verifier refetches on an unknown `kid`): a few minutes are safe.
_JWKS_CACHE = "public, max-age=300"


def _not_found(what: str) -> Response:
    body = orjson.dumps(
        {
            "error": "not_found",
            "error_description": f"{what} is not served: the authorization server is off "
            "(`FHIR_OAUTH=off`)",
        }
    )
    return Response(body, status_code=404, media_type="application/json")


async def smart_configuration_route(request: Request) -> Response:
    body = orjson.dumps(smart_configuration(runtime(request).settings))
    return Response(body, media_type="application/json", headers={"Cache-Control": _DOCUMENT_CACHE})


async def openid_configuration_route(request: Request) -> Response:
    settings = runtime(request).settings
    if not settings.oauth_enabled:
        return _not_found("OpenID Connect discovery")
    return Response(
        orjson.dumps(openid_configuration(settings)),
        media_type="application/json",
        headers={"Cache-Control": _DOCUMENT_CACHE},
    )


async def jwks_route(request: Request) -> Response:
    """The public half of the signing keys (never a private member)."""
    keys = runtime(request).keys
    if keys is None:
        return _not_found("the key set")
    return Response(
        orjson.dumps(keys.jwks),
        media_type="application/jwk-set+json",
        headers={"Cache-Control": _JWKS_CACHE},
    )


def install(app: FastAPI) -> None:
    """Register the /fhir/.well-known routes ahead of every other: `/fhir/{type}/{id}` (read)
    would match them too."""
    for path, route in (
        (PATH, smart_configuration_route),
        (OPENID_PATH, openid_configuration_route),
    ):
        app.add_api_route(path, route, methods=["GET"])
        app.router.routes.insert(0, app.router.routes.pop())
    app.add_api_route(JWKS_PATH, jwks_route, methods=["GET"])
