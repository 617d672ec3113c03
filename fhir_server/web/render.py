"""Rendering a page: a stand-in, with the same `page()` and `security_headers()`, for the
CORS helper's `render.py` (fix/cors), which replaces it when both are merged."""

from __future__ import annotations

import gettext
from collections.abc import Iterable, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse

from fhir_server.web import STATIC_PATH

environment = Environment(
    loader=PackageLoader("fhir_server.web", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    extensions=["jinja2.ext.i18n"],
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,
)
cast(Any, environment).install_gettext_translations(gettext.NullTranslations(), newstyle=True)


def form_action_source(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme in {"http", "https"} and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}".lower()
    return f"{parts.scheme.lower()}:"


def security_headers(form_action: Iterable[str] = ()) -> dict[str, str]:
    targets = " ".join(["'self'", *dict.fromkeys(form_action_source(u) for u in form_action)])
    return {
        "Content-Security-Policy": "; ".join(
            (
                "default-src 'self'",
                "script-src 'self'",
                "style-src 'self'",
                "img-src 'self' data:",
                "object-src 'none'",
                "base-uri 'none'",
                f"form-action {targets}",
                "frame-ancestors 'none'",
            )
        ),
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Opener-Policy": "same-origin",
    }


def page(
    request: Request,
    template: str,
    *,
    status_code: int = 200,
    form_action: Iterable[str] = (),
    headers: Mapping[str, str] | None = None,
    **values: Any,
) -> HTMLResponse:
    context: dict[str, Any] = {
        "request": request,
        "lang": "en",
        "server_name": getattr(request.app, "title", None) or "FHIR server",
        "static": request.scope.get("root_path", "") + STATIC_PATH,
        **values,
    }
    body = environment.get_template(template).render(context)
    return HTMLResponse(
        body, status_code=status_code, headers={**security_headers(form_action), **(headers or {})}
    )
