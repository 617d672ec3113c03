"""Rendering a page: the Jinja2 environment of `templates/` and `page()`, which also sets the
security headers every page carries.

- Autoescape is on for every template, whatever its name; an undefined variable is an error, not
  an empty string.
- Texts are ready for translation: templates wrap them in `_()` (jinja2.ext.i18n, new style, so
  `_("Hello %(name)s", name=x)` escapes `x`). English is shipped (`NullTranslations`);
  `use_translations()` installs a catalogue.
- Headers (`security_headers()`): a Content-Security-Policy with no inline script or style
  (`default-src 'self'`), `form-action 'self'` and the extra targets a page names (`form_action`),
  `frame-ancestors 'none'` with `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer`,
  `Cache-Control: no-store`, `X-Content-Type-Options: nosniff`.

The `form_action` hook exists for the authorization page: its form posts to this server, which
answers with a redirect to the app's `redirect_uri`, and browsers apply `form-action` to the
redirect too. The page names that redirect URI; its origin (or, for a native app's custom scheme,
the scheme) joins `form-action`, and nothing else does.
"""

from __future__ import annotations

import gettext
import re
from collections.abc import Iterable, Mapping
from typing import Any, cast

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse

from fhir_server.settings import web_origin
from fhir_server.web import STATIC_PATH

LANGUAGE = "en"
DEFAULT_SERVER_NAME = "FHIR server"
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*):", re.IGNORECASE)
_NEVER_TARGETS = frozenset({"http", "https", "javascript", "data", "blob", "filesystem", "file"})

environment = Environment(
    loader=PackageLoader("fhir_server.web", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    extensions=["jinja2.ext.i18n"],
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,
)


def use_translations(translations: gettext.NullTranslations) -> None:
    """Translate every page's texts with `translations` (a gettext catalogue)."""
    # installed by jinja2.ext.i18n, so unknown to the type checker
    cast(Any, environment).install_gettext_translations(translations, newstyle=True)


use_translations(gettext.NullTranslations())


def form_action_source(url: str) -> str:
    """The CSP source expression that lets a form's redirect reach `url`: its origin, or its
    scheme for a custom scheme (`com.example.app:/callback` -> `com.example.app:`)."""
    origin = web_origin(url)
    if origin is not None:
        return origin
    match = _SCHEME.match(url)
    # an http(s) URL without an origin is malformed; these others would let a form run code
    if match is None or match.group(1).lower() in _NEVER_TARGETS:
        raise ValueError(f"`{url}` cannot be a form's target")
    return f"{match.group(1).lower()}:"


def content_security_policy(form_action: Iterable[str] = ()) -> str:
    targets = ["'self'", *dict.fromkeys(form_action_source(url) for url in form_action)]
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "object-src 'none'",
            "base-uri 'none'",
            f"form-action {' '.join(targets)}",
            "frame-ancestors 'none'",
        )
    )


def security_headers(form_action: Iterable[str] = ()) -> dict[str, str]:
    """The headers of every page (and of the pages' redirects and errors)."""
    return {
        "Content-Security-Policy": content_security_policy(form_action),
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
    """`template` (a file of `templates/`, usually extending `base.html`) rendered with `values`,
    as an HTML response with the pages' security headers. `form_action`: URLs a form of the page
    may end up at through a redirect (see the module's docstring)."""
    context: dict[str, Any] = {
        "request": request,
        "lang": LANGUAGE,
        "server_name": getattr(request.app, "title", None) or DEFAULT_SERVER_NAME,
        "static": request.scope.get("root_path", "") + STATIC_PATH,
        **values,
    }
    body = environment.get_template(template).render(context)
    return HTMLResponse(
        body,
        status_code=status_code,
        headers={**security_headers(form_action), **(headers or {})},
    )
