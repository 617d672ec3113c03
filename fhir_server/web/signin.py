"""The sign-in pages: `GET/POST /signin` (local accounts, docs/smart-authorize.md) and
`POST /signout`.

A local account (`oauth_users`, `fhir-server user add`) signs in with its username and password
(argon2). After `oauth_lockout_attempts` failures in a row the account is locked for
`oauth_lockout_seconds`: while locked even the right password is refused, and every refusal reads
the same ("wrong username or password, or the account is locked for a while"), so the page never
tells whether an account exists. Success sets the signed session cookie (web/session.py) and
sends the browser to `next`, which must be a path of this server (anything else, such as
`//evil.example` or `https://evil.example`, goes to the sign-in page itself).

Every sign-in and every refusal is a security event of the audit trail (never the password, never
the username of an unknown account).
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import FastAPI, Request
from starlette.responses import RedirectResponse, Response

from fhir_server.api.deps import runtime
from fhir_server.api.errors import status_of
from fhir_server.auth.passwords import hash_password, needs_rehash, verify_password
from fhir_server.errors import FhirError
from fhir_server.storage import oauth as store
from fhir_server.web.forms import read_form
from fhir_server.web.render import page, security_headers
from fhir_server.web.session import CSRF_FIELD, SignedIn, form_page, sessions

log = logging.getLogger(__name__)

SIGNIN_PATH = "/signin"
SIGNOUT_PATH = "/signout"
OIDC_PATH = "/signin/oidc"
AUTHORIZE_PATH = "/oauth/authorize"  # fhir_server/oauth/authorize.py (a layer above)
DEFAULT_NEXT = SIGNIN_PATH
MAX_NEXT = 8_192  # an authorization request with its state and scopes
MAX_USERNAME = 200
MAX_PASSWORD = 1_024
ANONYMOUS = "anonymous"  # the audit account of a refusal for an unknown username
REFUSED = "Wrong username or password, or the account is locked for a while."
# Characters a local path may not hold: controls, spaces and backslashes (browsers read `/\x`
# as `//x`, another host).
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")


def safe_next(value: Any) -> str:
    """`value` when it is a path of this server (`/oauth/authorize?...`), else the default: never
    another origin (`//evil.example`, `/\\evil.example`, `https://evil.example`, `javascript:`)."""
    if not isinstance(value, str) or not value or len(value) > MAX_NEXT:
        return DEFAULT_NEXT
    if not value.startswith("/") or value.startswith("//") or _UNSAFE.search(value):
        return DEFAULT_NEXT
    try:
        parts = urlsplit(value)
    except ValueError:
        return DEFAULT_NEXT
    if parts.scheme or parts.netloc:
        return DEFAULT_NEXT
    return value


def signin_url(next_path: str) -> str:
    return f"{SIGNIN_PATH}?{urlencode({'next': next_path})}"


def redirect(location: str, form_action: tuple[str, ...] = ()) -> RedirectResponse:
    """A 303 (a form's answer: the browser follows with GET) with the pages' headers."""
    return RedirectResponse(location, status_code=303, headers=security_headers(form_action))


def error_page(request: Request, exc: FhirError) -> Response:
    """A domain error as an HTML page (the pages never answer an OperationOutcome)."""
    return page(
        request,
        "error.html",
        status_code=status_of(exc),
        title="Something is not right",
        message=str(exc),
    )


def _form_value(form: Any, name: str, limit: int) -> str:
    value = form.get(name)
    return value[:limit] if isinstance(value, str) else ""


async def signin_page(request: Request) -> Response:
    return await _signin_form(request, safe_next(request.query_params.get("next")))


async def _redirect_targets(request: Request, next_path: str) -> tuple[str, ...]:
    """When `next` is an authorization request, the app's redirect URI (if it is one the app
    registered): signing in may end in a redirect there, and browsers apply the page's
    `form-action` to the redirects that follow a form."""
    parts = urlsplit(next_path)
    if parts.path != AUTHORIZE_PATH:
        return ()
    query = parse_qs(parts.query)
    client_id = query.get("client_id", [""])[0]
    asked = query.get("redirect_uri", [None])[0]
    async with runtime(request).db.connection() as conn:
        client = await store.get_client(conn, client_id)
    if client is None:
        return ()
    if asked is None:
        return client.redirect_uris[:1] if len(client.redirect_uris) == 1 else ()
    return (asked,) if asked in client.redirect_uris else ()


async def _signin_form(
    request: Request, next_path: str, *, error: str | None = None, username: str = ""
) -> Response:
    rt = runtime(request)
    settings = rt.settings
    manager = sessions(request)
    oidc = None
    if settings.login_oidc_issuer:
        host = urlsplit(settings.login_oidc_issuer).hostname or settings.login_oidc_issuer
        oidc = {"url": f"{OIDC_PATH}?{urlencode({'next': next_path})}", "name": host}
    return form_page(
        request,
        "signin.html",
        form_action=await _redirect_targets(request, next_path),
        title="Sign in",
        next=next_path,
        error=error,
        username=username,
        oidc=oidc,
        signed_in=await manager.current(request),
        signout=SIGNOUT_PATH,
    )


async def signin(request: Request) -> Response:
    manager = sessions(request)
    try:
        form = await read_form(request)
        manager.check_csrf(request, form.get(CSRF_FIELD))
    except FhirError as exc:
        await runtime(request).audit.security_event(
            account=ANONYMOUS,
            event="sign-in",
            allowed=False,
            explanation="sign-in refused: the form had no valid CSRF token",
            reason="csrf",
        )
        return error_page(request, exc)
    next_path = safe_next(form.get("next"))
    username = _form_value(form, "username", MAX_USERNAME).strip()
    password = _form_value(form, "password", MAX_PASSWORD)
    rt = runtime(request)
    settings = rt.settings
    now = rt.clock()
    async with rt.db.transaction() as conn:
        user = await store.get_user(conn, username) if username else None
        locked = user is not None and user.locked_until is not None and user.locked_until > now
        # The hash is checked whatever happens (as much work for an unknown or locked account).
        matches = verify_password(user.password_hash if user else None, password)
        if user is not None and matches and not locked:
            await store.sign_in_succeeded(conn, username)
            if needs_rehash(user.password_hash):
                await store.rehash_password(conn, username, hash_password(password))
        elif user is not None and not locked:
            locked_until = await store.sign_in_failed(
                conn,
                username,
                settings.oauth_lockout_attempts,
                now + timedelta(seconds=settings.oauth_lockout_seconds),
            )
            locked = locked_until is not None and locked_until > now
    if user is None or not matches or locked:
        if user is None:
            why = "unknown account"
        elif locked and matches:
            why = "the account is locked"
        else:
            why = "wrong password" + (" (the account is now locked)" if locked else "")
        await rt.audit.security_event(
            account=user.fhir_user if user is not None else ANONYMOUS,
            event="sign-in",
            allowed=False,
            explanation=f"sign-in refused: {why}",
            reason="locked" if locked else "credentials",
        )
        return await _signin_form(request, next_path, error=REFUSED, username=username)
    who = SignedIn(
        subject=f"local:{username}",
        fhir_user=user.fhir_user,
        auth_time=now.timestamp(),
        method="password",
    )
    await rt.audit.security_event(
        account=user.fhir_user,
        event="sign-in",
        allowed=True,
        explanation="signed in with a password",
    )
    response = redirect(next_path)
    await manager.sign_in(request, response, who)
    return response


async def signout(request: Request) -> Response:
    manager = sessions(request)
    try:
        form = await read_form(request)
        manager.check_csrf(request, form.get(CSRF_FIELD))
    except FhirError as exc:
        return error_page(request, exc)
    who = await manager.current(request)
    if who is not None:
        await runtime(request).audit.security_event(
            account=who.fhir_user, event="sign-out", allowed=True, explanation="signed out"
        )
    response = redirect(SIGNIN_PATH)
    await manager.sign_out(request, response)
    return response


def install(app: FastAPI) -> None:
    app.add_api_route(SIGNIN_PATH, signin_page, methods=["GET"], include_in_schema=False)
    app.add_api_route(SIGNIN_PATH, signin, methods=["POST"], include_in_schema=False)
    app.add_api_route(SIGNOUT_PATH, signout, methods=["POST"], include_in_schema=False)
