"""`/account/sharing`: what I share of my record (or of my minor child's) and with whom; share
more, or stop a share in one click (docs/account-sharing.md).

The page only asks and shows: services/workflows/sharing.py does the work, acting as the
signed-in person through the FHIR API's own interactions, so the engine decides every read and
write again on the server, whatever the page showed, and the audit records it. Every POST
checks the CSRF token and counts against the person's rate limit of changes; input the page
refuses and decisions the engine refuses come back as the page with a plain sentence (and the
reason code, for support), nothing written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.deps import Interaction
from fhir_server.api.errors import status_of
from fhir_server.errors import AccessDenied, FhirError
from fhir_server.services.context import Context
from fhir_server.services.workflows import sharing
from fhir_server.services.workflows.launch_choices import SCOPE_WORDS
from fhir_server.web.account.change import posted
from fhir_server.web.account.home import account_page
from fhir_server.web.acting import acting, sign_in_first
from fhir_server.web.signin import redirect

PATH = "/account/sharing"
REVOKE_PATH = f"{PATH}/revoke"
# What an engine refusal means, said to the person (the reason code goes beside it).
REFUSALS = {
    "invalid_role": "you may not change who sees this record",
    "invalid_compartment": "this is not a record you look after",
    "consent_required": "this is not a record you look after",
    "reference_mismatch": "this share does not belong to this record",
    "link_inactive": "your relationship to this person is no longer in force",
    "foreign_compartment": "this is not a record you look after",
    "insufficient_scope": "you may not change who sees this record",
}
DONE = {"granted": "Shared. It counts from now.", "revoked": "Stopped. It counts from now."}


def _chosen(records: list[sharing.Record], asked: str | None) -> sharing.Record | None:
    """The record asked for, if the person manages it; else their first one."""
    for record in records:
        if record.patient == asked:
            return record
    return records[0] if records and not asked else None


async def _show(
    request: Request,
    asked: str | None,
    *,
    error: str = "",
    code: str = "",
    status_code: int = 200,
) -> Response:
    found = await acting(request)
    if found is None:
        return sign_in_first(request)
    who, fhir = found
    async with fhir.db.connection() as conn, fhir.authorized(conn) as ctx:
        records = await sharing.records(ctx, conn, who.fhir_user)
        record = _chosen(records, asked)
        members = await sharing.family(ctx, conn, record.patient) if record else []
        shares = await sharing.shares(ctx, conn, record.patient) if record else []
    if record is None and asked and not error:
        error, status_code = "this is not a record you look after", 404
    labels = {m.reference: m.label for m in members}
    done = DONE.get(request.query_params.get("done", ""), "")
    return account_page(
        request,
        "account_sharing.html",
        status_code=status_code,
        records=records,
        record=record,
        members=members,
        shares=shares,
        labels=labels,
        scopes=[(s, SCOPE_WORDS[s]) for s in sharing.SCOPES],
        scope_words=SCOPE_WORDS,
        error=error,
        code=code,
        done=done,
    )


async def sharing_page(request: Request) -> Response:
    return await _show(request, request.query_params.get("for"))


async def _change(request: Request) -> tuple[Interaction, dict[str, str], list[str]] | Response:
    """The checks every POST makes first (change.posted); the form's values and ticked scopes."""
    checked = await posted(request)
    if isinstance(checked, Response):
        return checked
    _who, interaction, form = checked
    values = {k: v.strip() for k, v in form.items() if isinstance(v, str)}
    scopes = [v for v in form.getlist("scope") if isinstance(v, str)]
    return interaction, values, scopes


def _back(patient: str, done: str) -> Response:
    return redirect(f"{PATH}?{urlencode({'for': patient, 'done': done})}")


# A change of a record's sharing: (context, connection, patient, form values, ticked scopes).
Change = Callable[[Context, Any, str, dict[str, str], list[str]], Awaitable[object]]


async def _apply(request: Request, change: Change, done: str) -> Response:
    """Run `change` in one transaction as the signed-in person, then back to the page; each
    refusal comes back as the page, in words."""
    checked = await _change(request)
    if isinstance(checked, Response):
        return checked
    fhir, values, scopes = checked
    patient = values.get("for", "")
    try:
        async with fhir.db.transaction() as conn, fhir.authorized(conn) as ctx:
            await change(ctx, conn, patient, values, scopes)
    except AccessDenied as exc:
        return await _refused(request, patient, exc)
    except sharing.ShareRefused as exc:
        return await _show(request, patient, error=str(exc), status_code=400)
    except FhirError as exc:  # a version changed meanwhile, a Consent the server refuses, ...
        return await _show(request, patient, error=str(exc), status_code=status_of(exc))
    return _back(patient, done)


async def share(request: Request) -> Response:
    return await _apply(
        request,
        lambda ctx, conn, patient, values, scopes: sharing.grant(
            ctx, conn, patient, values.get("grantee", ""), scopes, values.get("end", "")
        ),
        "granted",
    )


async def revoke(request: Request) -> Response:
    return await _apply(
        request,
        lambda ctx, conn, patient, values, _scopes: sharing.revoke(
            ctx, conn, patient, values.get("consent", "")
        ),
        "revoked",
    )


async def _refused(request: Request, patient: str, exc: AccessDenied) -> Response:
    """The engine said no: the page again, in words, with the reason code for support."""
    words = REFUSALS.get(exc.reason, "this change is not allowed")
    return await _show(request, patient, error=words, code=exc.reason, status_code=403)


def install(app: FastAPI) -> None:
    app.add_api_route(PATH, sharing_page, methods=["GET"], include_in_schema=False)
    app.add_api_route(PATH, share, methods=["POST"], include_in_schema=False)
    app.add_api_route(REVOKE_PATH, revoke, methods=["POST"], include_in_schema=False)
