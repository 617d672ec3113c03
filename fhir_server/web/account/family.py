"""`GET /account/family`: the people the signed-in person acts for and who act for them, in the
engine's own words (services/workflows/family_view.py), with when a minor comes of age; and
`GET /account/family/why?patient=...&via=...`: the rule and evidence behind one row.

The page only renders: the rows, their words and the decisions come from the service, which
asks the engine as the signed-in person (web/acting.py). A why? of a pair that is not one of
the person's own rows is 404, the same page whether or not the pair exists, and is audited as
a denial.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.services.workflows import family_view
from fhir_server.web.account.home import account_page
from fhir_server.web.acting import acting, sign_in_first

PATH = "/account/family"
WHY_PATH = "/account/family/why"


async def family(request: Request) -> Response:
    found = await acting(request)
    if found is None:
        return sign_in_first(request)
    _who, fhir = found
    async with fhir.db.connection() as conn, fhir.authorized(conn) as ctx:
        view = await family_view.family_view(ctx, conn)
    return account_page(request, "account_family.html", view=view, why_path=WHY_PATH)


async def why(request: Request) -> Response:
    found = await acting(request)
    if found is None:
        return sign_in_first(request)
    _who, fhir = found
    patient = request.query_params.get("patient", "")
    via = request.query_params.get("via", "")
    async with fhir.db.connection() as conn, fhir.authorized(conn) as ctx:
        explained = await family_view.explain_link(ctx, conn, patient, via)
    if explained is None:
        return account_page(request, "account_family_why.html", why=None, status_code=404)
    return account_page(request, "account_family_why.html", why=explained)


def install(app: FastAPI) -> None:
    app.add_api_route(PATH, family, methods=["GET"], include_in_schema=False)
    app.add_api_route(WHY_PATH, why, methods=["GET"], include_in_schema=False)
