"""Server-rendered pages (sign-in, picker, approval, account): handlers and Jinja2 templates.

A layer beside `api` (DESIGN.md 2.1): pages call services as the API does. `render.page()` renders
a template on `templates/base.html` with the security headers every page carries; `install()`
serves the pages' static files (`static/site.css`) at `/static`. Pages work without JavaScript.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

STATIC_PATH = "/static"


def install(app: FastAPI) -> None:
    """Serve `fhir_server/web/static/` at `/static` (name `static`)."""
    app.mount(STATIC_PATH, StaticFiles(packages=[("fhir_server.web", "static")]), name="static")
