"""What every form of the account pages does before it changes anything (`posted`): a session
(else off to sign in), the form read, the session's CSRF check, then one more change counted
against the person's rate limit (web/acting.py). A refusal is an error page in plain words with
its HTTP status (400, 403, 429), never an OperationOutcome: these are pages for people."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.deps import Interaction
from fhir_server.errors import FhirError
from fhir_server.web.acting import acting, count_change, sign_in_first
from fhir_server.web.forms import read_form
from fhir_server.web.session import CSRF_FIELD, SignedIn, sessions
from fhir_server.web.signin import error_page


async def posted(request: Request) -> tuple[SignedIn, Interaction, FormData] | Response:
    """The signed-in person, their interaction and the form, when the form may go ahead; else
    the response that says why not (sign in first, or an error page)."""
    found = await acting(request)
    if found is None:
        return sign_in_first(request)
    who, interaction = found
    try:
        form = await read_form(request)
        sessions(request).check_csrf(request, form.get(CSRF_FIELD))
        count_change(who)
    except FhirError as refused:  # a malformed form, no CSRF token, too many changes
        return error_page(request, refused)
    return who, interaction, form


def field(form: FormData, name: str, limit: int = 200) -> str:
    """A text field of the form, trimmed and cut to `limit` characters ("" when absent)."""
    value = form.get(name)
    return value.strip()[:limit] if isinstance(value, str) else ""


def when(moment: datetime | None) -> str:
    """A moment as the pages show it: "4 December 2026, 13:05 UTC"."""
    if moment is None:
        return ""
    utc = moment.astimezone(UTC)
    return f"{utc.day} {utc:%B %Y, %H:%M} UTC"
