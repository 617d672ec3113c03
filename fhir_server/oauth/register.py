"""RFC 7591 dynamic client registration: `POST /oauth/register`.

Open registration would let anyone put an app in front of patients, so only a System client may
register (a bearer token with `system/` scopes, verified as every request's; an "initial access
token" in RFC 7591's words). The metadata is checked by authlib's RFC 7591 claims first (URIs,
`jwks` that is a key set of public keys, `jwks` and `jwks_uri` not both), then by the same rules
as `fhir-server client add` (fhir_server/oauth/clients.py).

Accepted metadata: `redirect_uris`, `token_endpoint_auth_method` (`none` for a public client,
`private_key_jwt` for a confidential one; required: RFC 7591's default `client_secret_basic` is
not offered), `grant_types`, `response_types` (`code`), `client_name`, `scope` (required),
`jwks` or `jwks_uri`, the informational `client_uri`, `logo_uri`, `contacts`, `tos_uri`,
`policy_uri`, `software_id`, `software_version`, and SMART launch types in the extension field
`smart_launch_types` (`ehr`, `standalone`). Unknown fields are ignored (RFC 7591 2).

A registration never grants more than the registering token holds (`beyond_caller`): otherwise a
read-only System client could register a client with `system/*.cruds` under a key of its own and
write with it. More is a 403 `insufficient_scope`, and nothing is stored.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import orjson
from authlib.oauth2.rfc7591 import ClientMetadataClaims
from fastapi import FastAPI, Request, Response
from joserfc.errors import InvalidClaimError

from fhir_server.api.deps import runtime
from fhir_server.auth.scopes import covers, parse_scope
from fhir_server.auth.tokens import Principal
from fhir_server.oauth.clients import (
    ClientMetadataError,
    check_jwks,
    check_redirect_uri,
    new_client,
)
from fhir_server.oauth.server import NO_STORE
from fhir_server.oauth.system_token import (
    Caller,
    Refusal,
    account_of,
    read_json_or_form,
    system_caller,
)
from fhir_server.storage import oauth

PATH = "/oauth/register"
LAUNCH_TYPES_FIELD = "smart_launch_types"
KINDS: dict[str, Literal["public", "confidential"]] = {
    "none": "public",
    "private_key_jwt": "confidential",
}
# Kept with the client and answered back, as sent.
INFORMATIONAL = (
    "client_uri",
    "logo_uri",
    "contacts",
    "tos_uri",
    "policy_uri",
    "software_id",
    "software_version",
)


# Every field this server reads (others are ignored).
KNOWN = (
    "redirect_uris",
    "token_endpoint_auth_method",
    "grant_types",
    "response_types",
    "client_name",
    "scope",
    "jwks",
    "jwks_uri",
    LAUNCH_TYPES_FIELD,
    *INFORMATIONAL,
)


def _invalid(description: str, error: str = "invalid_client_metadata") -> Refusal:
    return Refusal(400, error, description)


def _strings(metadata: dict[str, Any], name: str) -> list[str] | None:
    value = metadata.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        error = "invalid_redirect_uri" if name == "redirect_uris" else "invalid_client_metadata"
        raise _invalid(f"`{name}` must be a list of strings", error)
    return value


def _text(metadata: dict[str, Any], name: str) -> str | None:
    value = metadata.get(name)
    if value is not None and not isinstance(value, str):
        raise _invalid(f"`{name}` must be a string")
    return value


def client_from_metadata(client_id: str, metadata: dict[str, Any]) -> oauth.Client:
    """The client a registration asks for; `Refusal` 400 with RFC 7591's error code."""
    given_null = sorted(name for name in KNOWN if name in metadata and metadata[name] is None)
    if given_null:
        raise _invalid(f"`{given_null[0]}` is null: leave it out instead")
    method = _text(metadata, "token_endpoint_auth_method")
    if method not in KINDS:
        raise _invalid(
            "`token_endpoint_auth_method` must be `none` (public client, PKCE) or "
            "`private_key_jwt` (confidential client with a JWKS)"
        )
    redirect_uris = _strings(metadata, "redirect_uris")
    grant_types = _strings(metadata, "grant_types")
    response_types = _strings(metadata, "response_types")
    launch_types = _strings(metadata, LAUNCH_TYPES_FIELD)
    for name in ("client_name", "scope", "jwks_uri", *INFORMATIONAL):
        if name != "contacts":
            _text(metadata, name)
    _strings(metadata, "contacts")
    try:
        # the server's own rules first, for their precise words (and so that no symmetric or
        # private key reaches a key parser)
        for uri in redirect_uris or []:
            check_redirect_uri(uri)
        if metadata.get("jwks") is not None:
            check_jwks(metadata["jwks"])
    except ClientMetadataError as exc:
        raise _invalid(exc.description, exc.error) from None
    try:
        ClientMetadataClaims(dict(metadata), {}).validate()
    except InvalidClaimError as exc:
        claim = exc.claim
        if claim == "redirect_uris":
            raise _invalid("a redirect URI is not a valid URL", "invalid_redirect_uri") from None
        raise _invalid(f"`{claim}` is not valid") from None
    scope = _text(metadata, "scope")
    if not scope:
        raise _invalid("`scope` must name the scopes the client may ask for")
    if response_types is not None and set(response_types) - {"code"}:
        raise _invalid("`response_types` may hold `code` only")
    kind = KINDS[method]
    info = {name: metadata[name] for name in INFORMATIONAL if metadata.get(name) is not None}
    try:
        return new_client(
            client_id=client_id,
            name=_text(metadata, "client_name") or client_id,
            kind=kind,
            redirect_uris=redirect_uris or [],
            scope=scope,
            launch_types=launch_types,
            grant_types=grant_types,
            jwks=metadata.get("jwks"),
            jwks_uri=_text(metadata, "jwks_uri"),
            metadata={"token_endpoint_auth_method": method, **info},
        )
    except ClientMetadataError as exc:
        raise _invalid(exc.description, exc.error) from None


def beyond_caller(scope: str, caller: Principal) -> str | None:
    """The first scope of a registration that asks for more than the registering token holds,
    or None. A registration never grants more than its caller could do itself: each resource
    scope (`system/`, `user/` or `patient/`) must be covered by one of the caller's `system/`
    scopes (same resource type or `*`, no more permissions, at least its filter); a System
    client's access is a superset of what any user's or patient's token of that type could do,
    and the engine narrows a user's token further. Scopes that grant no resource access
    (`openid`, `fhirUser`, `launch`, `launch/patient`, `offline_access`, `online_access`) are
    not limited."""
    held = [s for s in caller.scopes if s.context == "system"]
    for text in scope.split():
        asked = parse_scope(text)  # checked by `new_client` already: it parses
        if asked is not None and not any(covers(h, asked) for h in held):
            return text
    return None


def client_information(client: oauth.Client, issued_at: int) -> dict[str, Any]:
    """RFC 7591 3.2.1: the client id, when it was issued, and the metadata as registered."""
    document: dict[str, Any] = {
        "client_id": client.client_id,
        "client_id_issued_at": issued_at,
        "client_name": client.name,
        "token_endpoint_auth_method": client.metadata.get("token_endpoint_auth_method"),
        "redirect_uris": list(client.redirect_uris),
        "grant_types": list(client.grant_types),
        "response_types": ["code"] if "authorization_code" in client.grant_types else [],
        "scope": client.scope,
        LAUNCH_TYPES_FIELD: list(client.launch_types),
    }
    if client.jwks is not None:
        document["jwks"] = client.jwks
    if client.jwks_uri is not None:
        document["jwks_uri"] = client.jwks_uri
    document.update({k: v for k, v in client.metadata.items() if k in INFORMATIONAL})
    return document


async def register(request: Request) -> Response:
    rt = runtime(request)
    principal = None
    try:
        principal = system_caller(request)
        metadata = await read_json_or_form(request, form=False)
        client = client_from_metadata(str(uuid.uuid4()), metadata)
        if (beyond := beyond_caller(client.scope, principal)) is not None:
            raise Refusal(
                403,
                "insufficient_scope",
                f"the registration asks for `{beyond[:200]}`, more than the registering token"
                " holds: a client may register only scopes within its own `system/` scopes",
            )
        now = rt.clock()
        async with rt.db.transaction() as conn:
            if not await oauth.add_client(conn, client, now):  # a UUID: never in practice
                raise Refusal(500, "server_error", "the client id is taken; try again")
        await request.app.state.client_origins.reload(rt.db)  # CORS admits it at once
    except Refusal as refusal:
        if isinstance(refusal, Caller):
            principal = refusal.principal
        await rt.audit.security_event(
            account=account_of(principal),
            event="register",
            allowed=False,
            explanation=f"client registration refused: {refusal.error}: {refusal.description}",
            reason=refusal.error,
        )
        return refusal.response()
    await rt.audit.security_event(
        account=account_of(principal),
        event="register",
        allowed=True,
        explanation=f"client `{client.client_id}` ({client.kind}) registered",
    )
    body = client_information(client, int(now.timestamp()))
    return Response(
        orjson.dumps(body), status_code=201, media_type="application/json", headers=NO_STORE
    )


def install(app: FastAPI) -> None:
    app.add_api_route(PATH, register, methods=["POST"])
