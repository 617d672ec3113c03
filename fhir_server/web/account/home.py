"""`GET /account`: the account's front page, and what every account page shares:
`account_page()` renders a template on `account_base.html` (navigation, sign-out form) with a
fresh CSRF token, for the signed-in person."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.web.acting import acting, sign_in_first
from fhir_server.web.session import form_page

PATH = "/account"
# The account's sections, in the navigation's order (each page module serves its own path).
SECTIONS: tuple[tuple[str, str], ...] = (
    (PATH, "Overview"),
    ("/account/family", "My family"),
    ("/account/sharing", "Sharing"),
    ("/account/dependents", "Dependents"),
    ("/account/activity", "Who looked at my record"),
    ("/account/apps", "Connected apps"),
)


def account_page(request: Request, template: str, **values: Any) -> Response:
    """An account page: `template` extends `account_base.html` (the navigation, which
    translates the section names, and the sign-out form); its forms carry `csrf_token`."""
    return form_page(request, template, account_sections=SECTIONS, **values)


async def home(request: Request) -> Response:
    found = await acting(request)
    if found is None:
        return sign_in_first(request)
    who, _interaction = found
    return account_page(request, "account_home.html", who=who.fhir_user)


def install(app: FastAPI) -> None:
    app.add_api_route(PATH, home, methods=["GET"], include_in_schema=False)
