"""What makes a client registration acceptable, for `fhir-server client add` and for RFC 7591
dynamic registration (`POST /oauth/register`) alike: one set of rules, one error type.

Rules (docs/smart-admin.md#registering-an-app):
- redirect URIs are absolute `https` URLs, or `http` on a loopback host (127.0.0.1, ::1,
  localhost: native apps and development, RFC 8252 7.3); no fragment, no user info;
- a public client authenticates with nothing (`none`) and so must use PKCE at the authorization
  endpoint; it may not hold `system/` scopes (backend services authenticate);
- a confidential client authenticates with `private_key_jwt` (RFC 7523) and needs a JWKS (a URL
  or the set itself, public keys only); no shared secrets are issued;
- scopes are SMART scopes as the server parses them; launch types are `ehr` and `standalone`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import jwt
from jwt import PyJWKSet

from fhir_server.auth.scopes import ScopeError, parse_scopes
from fhir_server.storage.oauth import Client

LAUNCH_TYPES = ("ehr", "standalone")
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")
AUTH_METHODS = {"public": "none", "confidential": "private_key_jwt"}
_CLIENT_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")
_LOOPBACK_NAMES = frozenset({"localhost"})
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
MAX_NAME = 200
MAX_REDIRECT_URIS = 20


class ClientMetadataError(ValueError):
    """A registration that breaks a rule: `error` is RFC 7591's code (`invalid_redirect_uri` or
    `invalid_client_metadata`), the message says which value and why."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def _metadata_error(description: str) -> ClientMetadataError:
    return ClientMetadataError("invalid_client_metadata", description)


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_or_https(uri: str, what: str, error: str) -> str:
    if not isinstance(uri, str) or not uri or len(uri) > 2000:
        raise ClientMetadataError(error, f"{what} must be a URL, got `{str(uri)[:100]}`")
    try:
        parts = urlsplit(uri)
        host = parts.hostname
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError:
        raise ClientMetadataError(error, f"{what} `{uri}` is not a URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ClientMetadataError(error, f"{what} `{uri}` must be an absolute https URL")
    if parts.scheme == "http" and not is_loopback(host):
        raise ClientMetadataError(
            error, f"{what} `{uri}` must use https (http only on a loopback host)"
        )
    if "@" in parts.netloc:
        raise ClientMetadataError(error, f"{what} `{uri}` must not carry user information")
    if parts.fragment or uri.endswith("#"):
        raise ClientMetadataError(error, f"{what} `{uri}` must not have a fragment")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in uri):
        raise ClientMetadataError(error, f"{what} `{uri!r}` holds spaces or control characters")
    return uri


def check_redirect_uri(uri: str) -> str:
    return _loopback_or_https(uri, "the redirect URI", "invalid_redirect_uri")


def check_jwks_uri(uri: str) -> str:
    return _loopback_or_https(uri, "`jwks_uri`", "invalid_client_metadata")


def check_jwks(jwks: Any) -> dict[str, Any]:
    """A JWK Set of public keys usable for signature checks (RS*, ES*)."""
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, Mapping) for k in keys):
        raise _metadata_error("`jwks` must be a JWK Set: an object with a non-empty `keys` list")
    for key in keys:
        if _PRIVATE_MEMBERS & set(key):
            raise _metadata_error("`jwks` must hold public keys only, never private members")
        if key.get("kty") not in ("RSA", "EC"):
            raise _metadata_error("`jwks` keys must be RSA or EC keys (`kty`)")
    try:
        PyJWKSet.from_dict(dict(jwks))
    except (jwt.PyJWKSetError, jwt.InvalidKeyError, ValueError, TypeError):
        raise _metadata_error("`jwks` holds a key that cannot be read") from None
    return dict(jwks)


def check_client_id(client_id: str) -> str:
    if not isinstance(client_id, str) or _CLIENT_ID.fullmatch(client_id) is None:
        raise _metadata_error(
            "a client id is 1 to 128 letters, digits and `.`, `_`, `~`, `-`; "
            f"got `{str(client_id)[:140]}`"
        )
    return client_id


def check_scope(scope: str) -> str:
    if not isinstance(scope, str) or not scope.split():
        raise _metadata_error("`scope` must name the scopes the client may ask for")
    try:
        parse_scopes(scope)
    except ScopeError as exc:
        raise _metadata_error(str(exc)) from None
    return " ".join(dict.fromkeys(scope.split()))


def default_grant_types(
    kind: Literal["public", "confidential"], redirect_uris: Sequence[str], scope: str
) -> tuple[str, ...]:
    """A public client uses the authorization code flow; a confidential one too when it has
    redirect URIs, and client credentials when it holds `system/` scopes."""
    grants: list[str] = []
    if redirect_uris:
        grants += ["authorization_code", "refresh_token"]
    if kind == "confidential" and any(s.startswith("system/") for s in scope.split()):
        grants.append("client_credentials")
    return tuple(grants)


def new_client(
    *,
    client_id: str,
    name: str,
    kind: Literal["public", "confidential"],
    redirect_uris: Iterable[str],
    scope: str,
    launch_types: Iterable[str] | None = None,
    grant_types: Iterable[str] | None = None,
    jwks: Any = None,
    jwks_uri: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Client:
    """The client, once every rule holds; else `ClientMetadataError`."""
    check_client_id(client_id)
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise _metadata_error(f"a client needs a name of 1 to {MAX_NAME} characters")
    if kind not in AUTH_METHODS:
        raise _metadata_error(f"a client is `public` or `confidential`, not `{kind}`")
    uris = tuple(dict.fromkeys(check_redirect_uri(u) for u in redirect_uris))
    if len(uris) > MAX_REDIRECT_URIS:
        raise _metadata_error(f"at most {MAX_REDIRECT_URIS} redirect URIs")
    scope = check_scope(scope)
    grants = (
        default_grant_types(kind, uris, scope)
        if grant_types is None
        else tuple(dict.fromkeys(grant_types))
    )
    unknown = [g for g in grants if g not in GRANT_TYPES]
    if unknown:
        raise _metadata_error(f"grant type `{unknown[0]}` is not one of {list(GRANT_TYPES)}")
    if not grants:
        raise _metadata_error(
            "the client can use no grant: give redirect URIs (authorization code) or, for a "
            "confidential client, `system/` scopes (client credentials)"
        )
    if "authorization_code" in grants and not uris:
        raise _metadata_error("the authorization code grant needs at least one redirect URI")
    if "refresh_token" in grants and "authorization_code" not in grants:
        raise _metadata_error("`refresh_token` comes with the `authorization_code` grant only")
    if kind == "public":
        if "client_credentials" in grants:
            raise _metadata_error("a public client cannot use client credentials")
        if any(s.startswith("system/") for s in scope.split()):
            raise _metadata_error("a public client cannot hold `system/` scopes")
        if jwks is not None or jwks_uri is not None:
            raise _metadata_error("a public client has no keys (`jwks`, `jwks_uri`)")
    else:
        if (jwks is None) == (jwks_uri is None):
            raise _metadata_error(
                "a confidential client (private_key_jwt) needs exactly one of `jwks_uri` and `jwks`"
            )
        if jwks is not None:
            jwks = check_jwks(jwks)
        if jwks_uri is not None:
            jwks_uri = check_jwks_uri(jwks_uri)
    # an app that signs people in launches standalone unless told otherwise; a backend service
    # does not launch
    launches = tuple(
        dict.fromkeys(
            launch_types
            if launch_types is not None
            else (("standalone",) if "authorization_code" in grants else ())
        )
    )
    unknown = [t for t in launches if t not in LAUNCH_TYPES]
    if unknown:
        raise _metadata_error(f"launch type `{unknown[0]}` is not one of {list(LAUNCH_TYPES)}")
    if launches and "authorization_code" not in grants:
        raise _metadata_error("a launch (`ehr`, `standalone`) needs the authorization code grant")
    return Client(
        client_id=client_id,
        name=name.strip(),
        kind=kind,
        redirect_uris=uris,
        scope=scope,
        launch_types=launches,
        grant_types=grants,
        jwks_uri=jwks_uri,
        jwks=jwks,
        metadata=dict(metadata or {}),
    )
