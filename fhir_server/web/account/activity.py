"""`GET /account/activity`: who looked at my record (and my minor children's), from the
AuditEvents, as the signed-in person's own search of them (services/workflows/activity.py);
`/account/activity.csv` and `/account/activity.json` export what the page shows, with the same
filters, as CSV and as a FHIR Bundle. Reading only: no form posts here, so no CSRF check or
change count; the filters are a GET form (they change nothing)."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.errors import BadRequest
from fhir_server.services.workflows import activity as events
from fhir_server.web.account.home import account_page
from fhir_server.web.acting import acting, sign_in_first

PATH = "/account/activity"
FHIR_JSON = "application/fhir+json"


async def activity_page(request: Request) -> Response:
    return await _answer(request, "html")


async def activity_csv(request: Request) -> Response:
    return await _answer(request, "csv")


async def activity_json(request: Request) -> Response:
    return await _answer(request, "json")


async def _answer(request: Request, form: str) -> Response:
    found = await acting(request)
    if found is None:
        return sign_in_first(request)
    who, fhir = found
    values = dict(request.query_params)
    if form == "html" and values.get("format") in {"csv", "json"}:
        form = values["format"]
    async with fhir.db.connection() as conn, fhir.authorized(conn) as ctx:
        subjects = await events.subjects(ctx, conn, who.fhir_user)
        count = events.EXPORT_SIZE if form != "html" else events.PAGE_SIZE
        try:
            filters = events.parse_filters(values, subjects)
            shown = await events.activity(ctx, conn, subjects, filters, count=count)
        except BadRequest as error:
            return account_page(
                request,
                "account_activity.html",
                status_code=400,
                error=str(error),
                subjects=subjects,
                filters=events.Filters(),
                shown=None,
                agents=[],
                query="",
            )
        base_url = ctx.base_url
    if form == "csv":
        return Response(
            events.csv_text(shown.entries),
            media_type="text/csv; charset=utf-8",
            headers=_download("activity.csv"),
        )
    if form == "json":
        return Response(
            events.fhir_bundle(shown.entries, base_url),
            media_type=FHIR_JSON,
            headers=_download("activity.json"),
        )
    agents = sorted({(e.agent, e.who) for e in shown.entries if e.agent}, key=lambda a: a[1])
    kept = {k: v for k, v in values.items() if k in {"patient", "agent", "from", "to"} and v}
    return account_page(
        request,
        "account_activity.html",
        error=None,
        subjects=subjects,
        filters=filters,
        shown=shown,
        agents=agents,
        query=urlencode(kept),
    )


def _download(name: str) -> dict[str, str]:
    return {"content-disposition": f'attachment; filename="{name}"', "cache-control": "no-store"}


def install(app: FastAPI) -> None:
    app.add_api_route(PATH, activity_page, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{PATH}.csv", activity_csv, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{PATH}.json", activity_json, methods=["GET"], include_in_schema=False)
