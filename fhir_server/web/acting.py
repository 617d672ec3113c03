"""Acting as the signed-in person: the pages' way into the services.

A page request with a session becomes the same `Interaction` a FHIR request with a token
becomes (api/deps.py), with a principal made from the session: the person's `fhirUser` and the
scopes `user/*.cruds` (the engine, not the scope, decides what they may do). `acting.authorized(
conn)` loads their guard exactly as a FHIR request does, and every decision made under it is an
AuditEvent. Without a session the page sends the browser to sign in and back.

Changes are rate-limited per person (`CHANGES_PER_MINUTE`), in memory per process.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from fhir_server.api.deps import Interaction, request_context, runtime
from fhir_server.auth.tokens import Principal, principal_from_claims
from fhir_server.errors import TooManyRequests
from fhir_server.web.session import SignedIn, sessions

SCOPE = "user/*.cruds"
CLIENT_ID = "account-pages"
CHANGES_PER_MINUTE = 20
_changes: dict[str, deque[float]] = defaultdict(deque)


def principal_of(who: SignedIn) -> Principal:
    """The principal of a signed-in person, read by the same code as a token's claims."""
    return principal_from_claims(
        {"sub": who.subject, "fhirUser": who.fhir_user, "scope": SCOPE, "client_id": CLIENT_ID}
    )


def sign_in_first(request: Request) -> Response:
    """Off to the sign-in page, and back here afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)


async def acting(request: Request) -> tuple[SignedIn, Interaction] | None:
    """Who is signed in and the interaction they act in; None without a session."""
    who = await sessions(request).current(request)
    if who is None:
        return None
    rt = runtime(request)
    ctx = request_context(request, rt)
    return who, Interaction(rt.db, ctx, "representation", False, rt, principal_of(who))


def count_change(who: SignedIn, now: float | None = None) -> None:
    """One more change by this person; 429 beyond `CHANGES_PER_MINUTE` in a minute."""
    moment = time.monotonic() if now is None else now
    recent = _changes[who.subject]
    while recent and recent[0] < moment - 60:
        recent.popleft()
    if len(recent) >= CHANGES_PER_MINUTE:
        raise TooManyRequests("too many changes in a minute: wait a moment and try again")
    recent.append(moment)
