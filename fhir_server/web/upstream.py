"""Sign-in delegated to an upstream OpenID Connect provider (docs/smart-upstream.md).

`GET /signin/oidc?next=/local/path` sends the browser to the provider (authorization code flow
with `state`, `nonce` and PKCE S256); `GET /signin/oidc/callback` checks `state` against the
browser's own signed cookie, redeems the code at the provider's token endpoint (server to server,
with the client secret), verifies the ID token (signature against the provider's JWKS with an
asymmetric algorithm the provider advertises, `iss`, `aud`, `azp`, `exp`, `iat`, `nonce`), and
maps its `sub` to the one active Person that carries the identifier
`{system: FHIR_LOGIN_OIDC_IDENTIFIER_SYSTEM or the issuer, value: sub}`. The Person is looked up
by the server itself, through the services layer, as any of its own workflows reads.

Every sign-in and every refusal is a security AuditEvent (`sign-in`). What the provider sends
(codes, tokens) never reaches a log, an AuditEvent or a page.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx
import jinja2
from fastapi import FastAPI
from itsdangerous import BadSignature, URLSafeTimedSerializer
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError, MissingKeyError
from joserfc.jwk import KeySet
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fhir_server.api.deps import runtime
from fhir_server.services.context import Context, server_guard
from fhir_server.services.workflows.persons import persons_with_identifier
from fhir_server.settings import Settings
from fhir_server.web.session import SignedIn, secure_cookies, session_secret, sessions

log = logging.getLogger(__name__)

SIGN_IN_PATH = "/signin/oidc"
CALLBACK_PATH = "/signin/oidc/callback"
# Where a sign-in without a (valid) `next` lands: the sign-in page, which shows who is signed in.
DEFAULT_NEXT = "/signin"
# `next` rides in the sign-in cookie, and browsers drop cookies beyond 4 KB.
NEXT_MAX = 2_000
# The browser's pending sign-in (state, nonce, PKCE verifier, next): signed, HttpOnly, sent only
# to the callback, good for ten minutes.
FLOW_COOKIE = "fhir_oidc_flow"
FLOW_SECONDS = 600
# The provider's discovery document and keys are fetched again after an hour (and the keys at
# once when an ID token names a key id they lack: the provider rotated).
DISCOVERY_SECONDS = 3_600
KEYS_REFETCH_SECONDS = 10
HTTP_TIMEOUT_SECONDS = 10.0
# ID tokens are accepted only with an asymmetric signature: never `none`, never an HMAC keyed
# with the client secret (which the server would then have to treat as a verification key).
SIGNING_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# The agent of a refusal before anyone is known (a bad state, a provider error).
SIGN_IN_ACCOUNT = "System/sign-in"
SUBJECT_MAX = 255
# Persons looked up for one subject at most: two already make it ambiguous.
PERSON_LIMIT = 2


class SignInRefused(Exception):
    """A sign-in that cannot go on: `reason` (a code for support), a plain sentence for the
    person, the HTTP status of the page, and what the AuditEvent says (never a secret)."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        status: int = 400,
        audit: str = "",
        title: str = "Sign-in failed",
    ) -> None:
        super().__init__(reason)
        self.title = title
        self.reason = reason
        self.message = message
        self.status = status
        self.audit = audit or message


@dataclass(frozen=True, slots=True)
class Provider:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    algorithms: tuple[str, ...]  # of ID token signatures: advertised AND asymmetric
    client_auth: str  # client_secret_basic or client_secret_post


@dataclass(frozen=True, slots=True)
class Flow:
    """A pending sign-in of one browser."""

    state: str
    nonce: str
    verifier: str
    next: str


def local_path(next: str | None) -> str | None:
    """`next` when it is a path of this server (`/oauth/authorize?...`), else None: never
    another origin (`//evil`, `/\\evil`, `https://evil`), never a control character."""
    if not next or not next.startswith("/") or len(next) > NEXT_MAX:
        return None
    if next.startswith("//") or "\\" in next:
        return None
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in next):
        return None
    parts = urlsplit(next)
    if parts.scheme or parts.netloc:
        return None
    return next


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class Upstream:
    """The provider of `FHIR_LOGIN_OIDC_ISSUER`: its metadata and keys, cached."""

    def __init__(self, settings: Settings, secret: str, clock: Callable[[], datetime]) -> None:
        assert settings.login_oidc_issuer and settings.login_oidc_client_id
        self.settings = settings
        self.clock = clock
        self.issuer = settings.login_oidc_issuer
        self.client_id = settings.login_oidc_client_id
        self.client_secret = settings.login_oidc_client_secret or ""
        self.identifier_system = settings.login_oidc_identifier_system or self.issuer
        origin = urlsplit(settings.public_base)
        self.redirect_uri = f"{origin.scheme}://{origin.netloc}{CALLBACK_PATH}"
        self._flows = URLSafeTimedSerializer(secret, salt="fhir-server upstream sign-in")
        self._lock = asyncio.Lock()
        self._provider: tuple[float, Provider] | None = None
        self._keys: tuple[float, KeySet] | None = None
        self._forced = -float("inf")  # when the keys were last fetched for an unknown key id

    # --- the provider -------------------------------------------------------------------

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS) as http:
                answer = await http.get(url, headers={"accept": "application/json"})
        except httpx.HTTPError as exc:
            log.warning(
                "the identity provider's %s could not be fetched: %s", what, type(exc).__name__
            )
            raise SignInRefused(
                "provider_unavailable",
                "The identity provider cannot be reached. Please try again later.",
                status=502,
                audit=f"the identity provider's {what} could not be fetched",
            ) from None
        if answer.status_code != 200:
            raise SignInRefused(
                "provider_unavailable",
                "The identity provider cannot be reached. Please try again later.",
                status=502,
                audit=f"the identity provider's {what} answered {answer.status_code}",
            )
        try:
            document = answer.json()
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise SignInRefused(
                "provider_invalid",
                "The identity provider answered something this server cannot use.",
                status=502,
                audit=f"the identity provider's {what} is not a JSON object",
            )
        return document

    async def provider(self) -> Provider:
        async with self._lock:
            if self._provider and time.monotonic() - self._provider[0] < DISCOVERY_SECONDS:
                return self._provider[1]
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            document = await self._get_json(url, "discovery document")
            provider = self._parse(document)
            self._provider = (time.monotonic(), provider)
            return provider

    def _parse(self, document: dict[str, Any]) -> Provider:
        def invalid(why: str) -> SignInRefused:
            return SignInRefused(
                "provider_invalid",
                "The identity provider is not set up in a way this server can use.",
                status=502,
                audit=f"the identity provider's discovery document {why}",
            )

        # OpenID Connect Discovery 4.3: the document must name exactly the configured issuer
        if document.get("issuer") != self.issuer:
            raise invalid("names another issuer")
        endpoints = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = document.get(name)
            if not isinstance(value, str) or urlsplit(value).scheme not in {"https", "http"}:
                raise invalid(f"has no usable `{name}`")
            endpoints[name] = value
        advertised = document.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = tuple(a for a in advertised if isinstance(a, str) and a in SIGNING_ALGORITHMS)
        if not algorithms:
            raise invalid("advertises no asymmetric ID token signature")
        methods = document.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if "client_secret_basic" in methods:
            client_auth = "client_secret_basic"
        elif "client_secret_post" in methods:
            client_auth = "client_secret_post"
        else:
            raise invalid("offers no client secret authentication at its token endpoint")
        return Provider(
            issuer=self.issuer,
            authorization_endpoint=endpoints["authorization_endpoint"],
            token_endpoint=endpoints["token_endpoint"],
            jwks_uri=endpoints["jwks_uri"],
            algorithms=algorithms,
            client_auth=client_auth,
        )

    async def keys(self, provider: Provider, *, refresh: bool = False) -> KeySet:
        """The provider's keys; `refresh`: fetched again (an unknown key id), at most once
        every `KEYS_REFETCH_SECONDS`, so that forged key ids cannot make the server hammer
        the provider."""
        async with self._lock:
            now = time.monotonic()
            if refresh and now - self._forced >= KEYS_REFETCH_SECONDS:
                self._forced = now
            elif self._keys and now - self._keys[0] < DISCOVERY_SECONDS:
                return self._keys[1]
        document = await self._get_json(provider.jwks_uri, "JWKS")
        try:
            keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError):
            raise SignInRefused(
                "provider_invalid",
                "The identity provider answered something this server cannot use.",
                status=502,
                audit="the identity provider's JWKS holds no usable key",
            ) from None
        async with self._lock:
            self._keys = (time.monotonic(), keys)
        return keys

    # --- the flow -----------------------------------------------------------------------

    def start(self, provider: Provider, next: str) -> tuple[str, str]:
        """The provider's authorization URL and the signed cookie of this pending sign-in."""
        flow = Flow(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(48),
            next=next,
        )
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": "openid",
                "state": flow.state,
                "nonce": flow.nonce,
                "code_challenge": _challenge(flow.verifier),
                "code_challenge_method": "S256",
            }
        )
        separator = "&" if "?" in provider.authorization_endpoint else "?"
        cookie = self._flows.dumps([flow.state, flow.nonce, flow.verifier, flow.next])
        return f"{provider.authorization_endpoint}{separator}{query}", cookie

    def pending(self, cookie: str | None, state: str | None) -> Flow:
        """The browser's pending sign-in, if `state` is its own (else a refusal: CSRF)."""
        refused = SignInRefused(
            "state",
            "This sign-in was not started in this browser, or it took too long. "
            "Please start again.",
            audit="the callback's `state` is not this browser's pending sign-in",
        )
        if not cookie or not state:
            raise refused
        try:
            values = self._flows.loads(cookie, max_age=FLOW_SECONDS)
        except BadSignature:
            raise refused from None
        if not (isinstance(values, list) and len(values) == 4):
            raise refused
        flow = Flow(*(str(v) for v in values))
        if not secrets.compare_digest(flow.state.encode(), state.encode()):
            raise refused
        return flow

    async def redeem(self, provider: Provider, code: str, flow: Flow) -> str:
        """The ID token for the code (the provider checks the code, secret, redirect URI and
        PKCE verifier)."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": flow.verifier,
        }
        headers = {"accept": "application/json"}
        if provider.client_auth == "client_secret_basic":
            # RFC 6749 2.3.1: both form-encoded before they are joined
            pair = f"{quote(self.client_id, safe='')}:{quote(self.client_secret, safe='')}"
            headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form |= {"client_id": self.client_id, "client_secret": self.client_secret}
        failed = SignInRefused(
            "token_endpoint",
            "The identity provider did not complete the sign-in. Please try again.",
            status=502,
        )
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS) as http:
                answer = await http.post(provider.token_endpoint, data=form, headers=headers)
        except httpx.HTTPError as exc:
            failed.audit = f"the identity provider's token endpoint failed: {type(exc).__name__}"
            raise failed from None
        try:
            body = answer.json()
        except ValueError:
            body = None
        if answer.status_code != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            failed.audit = (
                f"the identity provider's token endpoint answered {answer.status_code}"
                + (f" `{error}`" if isinstance(error, str) and error.isascii() else "")
            )[:300]
            raise failed
        id_token = body.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            failed.audit = "the identity provider's token response has no `id_token`"
            raise failed
        return id_token

    async def verify(self, provider: Provider, id_token: str, nonce: str) -> dict[str, Any]:
        """The ID token's claims, once its signature and claims hold (OIDC Core 3.1.3.7)."""

        def bad(why: str) -> SignInRefused:
            return SignInRefused(
                "id_token",
                "The identity provider's answer could not be verified. Please try again.",
                status=502,
                audit=f"the identity provider's ID token was refused: {why}",
            )

        keys = await self.keys(provider)
        try:
            token = jwt.decode(id_token, keys, algorithms=list(provider.algorithms))
        except (InvalidKeyIdError, MissingKeyError):
            # a key id the cached set lacks: the provider may have rotated its keys
            keys = await self.keys(provider, refresh=True)
            try:
                token = jwt.decode(id_token, keys, algorithms=list(provider.algorithms))
            except JoseError as again:
                raise bad(again.error) from None
        except JoseError as exc:
            raise bad(exc.error) from None
        except (ValueError, TypeError):
            raise bad("not a JWS") from None
        now = int(self.clock().timestamp())
        registry = jwt.JWTClaimsRegistry(
            now=now,
            leeway=self.settings.auth_leeway_seconds,
            iss={"essential": True, "value": provider.issuer},
            aud={"essential": True, "value": self.client_id},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            registry.validate(token.claims)
        except JoseError as exc:
            raise bad(exc.error + (f" `{exc.description}`" if exc.description else "")) from None
        claims = dict(token.claims)
        audience = claims["aud"]
        if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != self.client_id:
            raise bad("several audiences and `azp` is not this client")
        sub = claims["sub"]
        if not isinstance(sub, str) or len(sub) > SUBJECT_MAX:
            raise bad("`sub` is not a string of at most 255 characters")
        return claims


# --- pages -------------------------------------------------------------------------------

_PAGES = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_ERROR_PAGE = _PAGES.from_string(
    """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
</head>
<body>
<main>
<h1>{{ title }}</h1>
<p>{{ message }}</p>
<p><a href="{{ retry }}">Back to sign-in</a></p>
<p><small>Reference for support: <code>{{ reason }}</code></small></p>
</main>
</body>
</html>
"""
)

_HEADERS = {
    "cache-control": "no-store",
    # the callback's URL holds a code: it must not leave in a Referer header
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; style-src 'self'; frame-ancestors 'none'",
}


def _error_page(title: str, refused: SignInRefused, retry: str = DEFAULT_NEXT) -> HTMLResponse:
    body = _ERROR_PAGE.render(
        title=title, message=refused.message, reason=refused.reason, retry=retry
    )
    return HTMLResponse(body, status_code=refused.status, headers=_HEADERS)


def _upstream(request: Request) -> Upstream:
    found: Upstream = request.app.state.upstream
    return found


# --- routes ------------------------------------------------------------------------------


async def start_sign_in(request: Request) -> Response:
    upstream = _upstream(request)
    raw_next = request.query_params.get("next")
    next = local_path(raw_next) if raw_next is not None else DEFAULT_NEXT
    try:
        if next is None:
            raise SignInRefused(
                "next", "The page to return to after sign-in is not a page of this server."
            )
        provider = await upstream.provider()
    except SignInRefused as exc:
        return await _refused(request, exc, "Sign-in is not available")
    location, cookie = upstream.start(provider, next)
    response = RedirectResponse(location, status_code=303, headers=_HEADERS)
    response.set_cookie(
        FLOW_COOKIE,
        cookie,
        max_age=FLOW_SECONDS,
        httponly=True,
        samesite="lax",  # sent on the provider's top-level redirect back, never cross-site POSTs
        secure=secure_cookies(request),
        path=CALLBACK_PATH,
    )
    return response


async def callback(request: Request) -> Response:
    upstream = _upstream(request)
    params = request.query_params
    try:
        flow = upstream.pending(request.cookies.get(FLOW_COOKIE), params.get("state"))
    except SignInRefused as exc:
        return _finish(await _refused(request, exc, "Sign-in failed"))
    retry = f"{SIGN_IN_PATH}?{urlencode({'next': flow.next})}"
    try:
        claims = await _verified_claims(upstream, params.get("error"), params.get("code"), flow)
        person = await _person(request, upstream, claims["sub"])
    except SignInRefused as exc:
        return _finish(await _refused(request, exc, exc.title, retry))
    rt = runtime(request)
    now = rt.clock().timestamp()
    auth_time = claims.get("auth_time")
    if not isinstance(auth_time, int | float) or isinstance(auth_time, bool) or auth_time > now:
        auth_time = now
    response = RedirectResponse(flow.next, status_code=303, headers=_HEADERS)
    await sessions(request).sign_in(
        request,
        response,
        SignedIn(
            subject=f"oidc:{upstream.issuer}|{claims['sub']}",
            fhir_user=person,
            auth_time=float(auth_time),
            method="oidc",
        ),
    )
    await rt.audit.security_event(
        account=person,
        event="sign-in",
        allowed=True,
        explanation=f"signed in through the identity provider `{upstream.issuer}`",
    )
    return _finish(response)


async def _verified_claims(
    upstream: Upstream, error: str | None, code: str | None, flow: Flow
) -> dict[str, Any]:
    """The claims of the ID token the provider gives for the callback's code."""
    if error is not None:
        named = error if error.isascii() and error.replace("_", "").isalnum() else "error"
        raise SignInRefused(
            "provider_refused",
            "The identity provider did not sign you in"
            + (" (you cancelled, or it refused)." if named == "access_denied" else "."),
            status=401,
            audit=f"the identity provider refused the sign-in: `{named[:64]}`",
        )
    if not code:
        raise SignInRefused(
            "no_code",
            "The identity provider's answer was incomplete. Please try again.",
            audit="the callback has no `code`",
        )
    provider = await upstream.provider()
    id_token = await upstream.redeem(provider, code, flow)
    return await upstream.verify(provider, id_token, flow.nonce)


async def _person(request: Request, upstream: Upstream, sub: str) -> str:
    """`Person/<id>`: the one active Person with the subject's identifier."""
    rt = runtime(request)
    ctx = Context(
        settings=rt.settings,
        validator=rt.validator,
        base_url=rt.settings.public_base,
        clock=rt.clock,
        guard=server_guard(),
    )
    async with rt.db.connection() as conn:
        persons = await persons_with_identifier(
            ctx, conn, upstream.identifier_system, sub, limit=PERSON_LIMIT
        )
    active = [id for id, is_active in persons if is_active]
    who = f"`{sub}` of `{upstream.issuer}`"
    if not active:
        raise SignInRefused(
            "not_linked",
            "You signed in with your identity provider, but your account is not linked to a "
            "record here. Please ask the records office to link it.",
            status=403,
            audit=f"{who} is linked to no active Person"
            + (" (only inactive ones)" if persons else ""),
            title="Your account is not linked to a record here",
        )
    if len(active) > 1:
        raise SignInRefused(
            "ambiguous",
            "Your account is linked to more than one record here, so this server cannot tell "
            "which one is yours. Please ask the records office to correct it.",
            status=403,
            audit=f"{who} is linked to several Persons",
            title="Your account is linked to several records",
        )
    return f"Person/{active[0]}"


async def _refused(
    request: Request, refused: SignInRefused, title: str, retry: str = DEFAULT_NEXT
) -> Response:
    """The refusal audited (before the answer), and its page."""
    await runtime(request).audit.security_event(
        account=SIGN_IN_ACCOUNT,
        event="sign-in",
        allowed=False,
        explanation=refused.audit,
        reason=refused.reason,
    )
    return _error_page(title, refused, retry)


def _finish(response: Response) -> Response:
    """The pending sign-in is used up, whatever came of it."""
    response.delete_cookie(FLOW_COOKIE, path=CALLBACK_PATH)
    return response


def install(app: FastAPI, settings: Settings, clock: Callable[[], datetime]) -> None:
    """The upstream sign-in routes, when `FHIR_LOGIN_OIDC_ISSUER` is set (with its client id)."""
    if not settings.login_oidc_issuer:
        return
    if not settings.login_oidc_client_id:
        raise ValueError("`FHIR_LOGIN_OIDC_ISSUER` needs `FHIR_LOGIN_OIDC_CLIENT_ID` too")
    app.state.upstream = Upstream(settings, session_secret(settings), clock)
    app.add_api_route(SIGN_IN_PATH, start_sign_in, methods=["GET"], include_in_schema=False)
    app.add_api_route(CALLBACK_PATH, callback, methods=["GET"], include_in_schema=False)
