"""The server's own pages (sign-in, picker, approval, account): handlers and Jinja2 templates.
They call services exactly as api/ does, never storage or SQL (DESIGN.md 2.1).
`render.page()` renders a template on `templates/base.html` with the security headers every page
carries; `install()` serves the pages' static files (`static/site.css`) at `/static`. Pages work
without JavaScript.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

STATIC_PATH = "/static"


class _NamedMount(Mount):
    """A mount that puts itself in the scope (as api.fhir.NamedRoute does): request metrics, logs
    and spans label its requests `/static`, not `unmatched`."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self
        await super().handle(scope, receive, send)


def install(app: FastAPI) -> None:
    """Serve `fhir_server/web/static/` at `/static` (name `static`)."""
    files = StaticFiles(packages=[("fhir_server.web", "static")])
    app.router.routes.append(_NamedMount(STATIC_PATH, app=files, name="static"))
