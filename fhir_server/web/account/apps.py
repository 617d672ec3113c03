"""`GET/POST /account/apps`: the SMART apps the signed-in person approved, for whose record, with
which permissions in plain words and when each last got a token; "Revoke" disconnects one
(docs/account-apps.md).

The list and the revocation are the service `connected_apps` (the authorization server's own
records of approvals and refresh tokens); whose record an approval is for is named from the
picker's list (`launch_choices.choices`, the engine's answer), so the page names nobody the
person may not see today. A revocation is audited like the other revocations of the
authorization server (a security AuditEvent `revoke`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.deps import runtime
from fhir_server.services.workflows import connected_apps, launch_choices, scope_words
from fhir_server.web.account.change import field, posted, when
from fhir_server.web.account.home import account_page
from fhir_server.web.acting import acting, sign_in_first
from fhir_server.web.signin import redirect

PATH = "/account/apps"


async def apps_page(request: Request) -> Response:
    found = await acting(request)
    if found is None:
        return sign_in_first(request)
    who, interaction = found
    async with interaction.db.connection() as conn, interaction.authorized(conn) as ctx:
        approved = await connected_apps.connected_apps(conn, who.subject)
        choices = await launch_choices.choices(ctx, conn, who.fhir_user) if approved else []
    names = {c.patient: (c.name, c.patient == c.via) for c in choices}
    standing = {
        c.patient: scope_words.you_are(c.relationships, c.via, c.patient == c.via) for c in choices
    }
    rows: list[dict[str, Any]] = []
    for app in approved:
        name, is_self = names.get(app.patient or "", (None, False))
        rows.append(
            {
                "client_id": app.client_id,
                "name": app.name,
                "patient": app.patient or "",
                "whose": name,
                "is_self": is_self,
                "standing": standing.get(app.patient or "", ""),
                "reachable": app.patient is None or name is not None,
                "scopes": app.scope_lines(name),
                "approved": when(app.approved_at),
                "last_used": when(app.last_used_at),
            }
        )
    return account_page(
        request,
        "account_apps.html",
        apps=rows,
        revoked=request.query_params.get("revoked") == "1",
        access_minutes=max(1, runtime(request).settings.oauth_access_token_seconds // 60),
    )


async def revoke(request: Request) -> Response:
    checked = await posted(request)
    if isinstance(checked, Response):
        return checked
    who, interaction, form = checked
    client_id = field(form, "client_id")
    patient = field(form, "patient") or None
    rt = runtime(request)
    async with interaction.db.transaction() as conn:
        revoked = await connected_apps.disconnect(conn, who.subject, client_id, patient, rt.clock())
    if revoked is None:
        # not (or no longer) an approval of this account: nothing was changed
        return redirect(PATH)
    await rt.audit.security_event(
        account=who.fhir_user,
        event="revoke",
        allowed=True,
        explanation=(
            f"account page: `{who.fhir_user}` revoked the approval of `{client_id}`"
            f" for {patient or 'no patient'} and {revoked} refresh token(s)"
        )[:1000],
        patients=(patient,) if patient else (),
    )
    return redirect(f"{PATH}?revoked=1")


def install(app: FastAPI) -> None:
    app.add_api_route(PATH, apps_page, methods=["GET"], include_in_schema=False)
    app.add_api_route(PATH, revoke, methods=["POST"], include_in_schema=False)
