"""SMART App Launch 2.0 discovery: `GET /fhir/.well-known/smart-configuration`.

Public (no token, no format negotiation): a client reads it before it has a token. It announces
the identity provider's endpoints from the settings and what that provider and this server can do
together. Fields that depend on an endpoint follow it: without `FHIR_AUTH_AUTHORIZE_URL` there is
no `authorization_endpoint`, no `authorization_code` grant and none of the capabilities that need
a user at an authorization page; without `FHIR_AUTH_TOKEN_URL` there is no grant at all (tokens
then come from elsewhere, e.g. `fhir-server dev-token`).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from fhir_server.api.deps import runtime
from fhir_server.auth.devkeys import DEV_ISSUER
from fhir_server.settings import Settings

PATH = "/fhir/.well-known/smart-configuration"

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


def smart_configuration(settings: Settings) -> dict[str, Any]:
    """The discovery document for these settings."""
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


async def smart_configuration_route(request: Request) -> Response:
    body = orjson.dumps(smart_configuration(runtime(request).settings))
    return Response(body, media_type="application/json")


def install(app: FastAPI) -> None:
    """Register the route ahead of every other: `/fhir/{type}/{id}` (read) would match it too."""
    app.add_api_route(PATH, smart_configuration_route, methods=["GET"])
    app.router.routes.insert(0, app.router.routes.pop())
