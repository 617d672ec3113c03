"""Sign-in sessions and CSRF tokens of the server's pages (sign-in, picker, approval, account).

A session is a cookie signed with the server's session secret (itsdangerous, HMAC-SHA-256 with a
timestamp): HttpOnly, SameSite=Lax, Secure unless the page is served on a loopback address, and
good for `FHIR_OAUTH_SESSION_SECONDS`. It holds who signed in and how, never a password or PHI,
and a random session id. The session lives on the server too (`oauth_sessions`, as a digest of
the id): a cookie is a session only while its row is there, unexpired, and, for a local account,
while the account exists with the FHIR user the session started as. Sign-out deletes the row;
`fhir-server user remove` and `user add --replace` delete the account's rows in the same
transaction as the change. So a copied cookie stops working then, in every server process (they
share the database), at the cost of one primary-key lookup per page.

CSRF: every browser gets a random id in its own HttpOnly cookie on its first page; a form's token
is that id signed for the purpose `csrf` (and dated). A form is accepted only with a token that
verifies, is recent, and names the browser's own id: a page of another site can neither read the
token nor make the browser send a matching one.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.deps import runtime
from fhir_server.errors import Forbidden
from fhir_server.settings import Settings
from fhir_server.storage import oauth as store
from fhir_server.web.render import page

SESSION_COOKIE = "fhir_session"
BROWSER_COOKIE = "fhir_browser"
CSRF_FIELD = "csrf_token"
CSRF_MAX_AGE = 3_600
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_SESSION_KEY_FILE = "session-secret"
_SESSION_ID = "sid"  # the cookie's field with the session id


@dataclass(frozen=True, slots=True)
class SignedIn:
    subject: str  # the account: "local:john", "oidc:<issuer>|<sub>"
    fhir_user: str  # "Person/5", "Patient/1", "RelatedPerson/9", "Practitioner/3"
    auth_time: float  # when the person proved who they are (Unix time)
    method: str  # "password" or "oidc"


def session_secret(settings: Settings) -> str:
    """`FHIR_SESSION_SECRET`, or a secret made once in the data folder (owner-readable only).
    Several server processes must share it: set it explicitly when they do not share a folder."""
    if settings.session_secret:
        return settings.session_secret
    path = Path(settings.data_dir) / "auth" / _SESSION_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def secure_cookies(request: Request) -> bool:
    """Secure cookies everywhere but on loopback (plain-HTTP development and tests)."""
    return (request.url.hostname or "") not in _LOOPBACK or request.url.scheme == "https"


class Sessions:
    def __init__(self, secret: str, lifetime_seconds: int) -> None:
        self.lifetime = lifetime_seconds
        self._sessions = URLSafeTimedSerializer(secret, salt="fhir-server session")
        self._csrf = URLSafeTimedSerializer(secret, salt="fhir-server csrf")

    def _cookie(self, request: Request, response: Response, name: str, value: str) -> None:
        response.set_cookie(
            name,
            value,
            max_age=self.lifetime,
            httponly=True,
            samesite="lax",
            secure=secure_cookies(request),
            path="/",
        )

    def from_cookie(self, request: Request) -> tuple[str, SignedIn] | None:
        """The session id and who the cookie names, when its signature holds and it is recent
        (whether the session is live is `current`'s question)."""
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            values: dict[str, Any] = self._sessions.loads(raw, max_age=self.lifetime)
            session_id = values.pop(_SESSION_ID, None)
            if not isinstance(session_id, str) or not session_id:
                return None  # a cookie of a server that kept no sessions: not a session
            return session_id, SignedIn(**values)
        except (BadSignature, TypeError):
            return None

    async def current(self, request: Request) -> SignedIn | None:
        """Who is signed in on this browser, if anyone: the cookie's session must be live on the
        server (not signed out, not expired, its account there and unchanged)."""
        found = self.from_cookie(request)
        if found is None:
            return None
        session_id, who = found
        rt = runtime(request)
        async with rt.db.connection() as conn:
            live = await store.session_live(
                conn, session_id, who.subject, who.fhir_user, rt.clock()
            )
        return who if live else None

    async def sign_in(self, request: Request, response: Response, who: SignedIn) -> None:
        """Start a session for `who` (on the server, and in the browser's cookie)."""
        rt = runtime(request)
        now = rt.clock()
        session_id = secrets.token_urlsafe(32)
        async with rt.db.transaction() as conn:
            await store.start_session(
                conn,
                session_id,
                who.subject,
                who.fhir_user,
                now,
                now + timedelta(seconds=self.lifetime),
            )
        value = self._sessions.dumps({**asdict(who), _SESSION_ID: session_id})
        self._cookie(request, response, SESSION_COOKIE, value)

    async def sign_out(self, request: Request, response: Response) -> None:
        """End this browser's session on the server (a copy of the cookie is no session any
        more) and drop its cookie."""
        found = self.from_cookie(request)
        if found is not None:
            async with runtime(request).db.transaction() as conn:
                await store.end_session(conn, found[0])
        response.delete_cookie(SESSION_COOKIE, path="/")

    def browser_id(self, request: Request, response: Response) -> str:
        """This browser's id, set in its cookie when it has none yet."""
        current = request.cookies.get(BROWSER_COOKIE)
        if current and 16 <= len(current) <= 64 and current.isascii():
            return current
        made = secrets.token_urlsafe(24)
        self._cookie(request, response, BROWSER_COOKIE, made)
        return made

    def csrf_token(self, request: Request, response: Response) -> str:
        """The token a form of this page carries (in the field `csrf_token`)."""
        return self._csrf.dumps(self.browser_id(request, response))

    def check_csrf(self, request: Request, submitted: Any) -> None:
        """403 unless `submitted` is a recent token of this very browser."""
        browser = request.cookies.get(BROWSER_COOKIE)
        if not isinstance(submitted, str) or not browser:
            raise Forbidden("the form has no valid CSRF token: reload the page", code="csrf")
        try:
            signed_for = self._csrf.loads(submitted, max_age=CSRF_MAX_AGE)
        except BadSignature:
            raise Forbidden(
                "the form has no valid CSRF token: reload the page", code="csrf"
            ) from None
        if not secrets.compare_digest(str(signed_for), browser):
            raise Forbidden("the form has no valid CSRF token: reload the page", code="csrf")


def install(app: Any, settings: Settings) -> None:
    """Make the application's `Sessions` (every page and the authorization server use it)."""
    app.state.sessions = Sessions(session_secret(settings), settings.oauth_session_seconds)


def sessions(request: Request) -> Sessions:
    found: Sessions = request.app.state.sessions
    return found


def form_page(request: Request, template: str, **values: Any) -> Response:
    """A page with forms: `web.render.page` with the `csrf_token` its forms carry, and the
    browser cookie that token is bound to when the browser has none yet."""
    holder = Response()
    token = sessions(request).csrf_token(request, holder)
    rendered = page(request, template, csrf_token=token, **values)
    for cookie in holder.headers.getlist("set-cookie"):
        rendered.headers.append("set-cookie", cookie)
    return rendered
