"""Cross-origin requests from browser apps (CORS), as one pure ASGI middleware.

Most SMART apps run in a browser on an origin of their own. This middleware lets the origins it is
given call the FHIR API (with SMART discovery) and the OAuth endpoints a browser app calls with
`fetch` (token, introspection, revocation, JWKS, registration), and no other path: the sign-in,
authorization and account pages are navigated to, never fetched, and must stay same-origin.

- A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) on one of those paths is
  answered here, before authentication and before any route: `204` with the allowed methods,
  request headers and `Access-Control-Max-Age` for an allowed origin; `403` without any CORS
  header for any other origin (the browser then refuses the request it wanted to send).
- Every other response on those paths carries `Vary: Origin`; for an allowed origin also
  `Access-Control-Allow-Origin` (the origin itself, never `*`) and
  `Access-Control-Expose-Headers`. No credentials mode: `Access-Control-Allow-Credentials` is
  never sent, so a browser never attaches cookies to these requests; apps send a bearer token.
- Which origins are allowed is asked of `origins()` per request with an `Origin` header, so a
  client registered (or removed) while the server runs counts at once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Paths under these prefixes (and the prefixes themselves), and these exact paths, speak CORS.
CORS_PREFIXES: tuple[str, ...] = ("/fhir",)
CORS_PATHS: frozenset[str] = frozenset(
    {"/oauth/token", "/oauth/introspect", "/oauth/revoke", "/oauth/jwks", "/oauth/register"}
)
ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD"
# The request headers this server reads on those paths (FHIR, SMART, OAuth, tracing).
ALLOW_HEADERS = ", ".join(
    (
        "Authorization",
        "Content-Type",
        "Accept",
        "If-Match",
        "If-None-Match",
        "If-None-Exist",
        "If-Modified-Since",
        "Prefer",
        "Idempotency-Key",
        "X-Request-Id",
        "X-Purpose-Of-Use",
        "X-Break-Glass-Reason",
        "X-FHIR-Read-After",
        "traceparent",
        "tracestate",
    )
)
# The response headers a script may read beyond the CORS-safelisted ones.
EXPOSE_HEADERS = ", ".join(
    (
        "ETag",
        "Location",
        "Content-Location",
        "Last-Modified",
        "X-Request-Id",
        "X-Emergency-Access",
        "Warning",
        "Retry-After",
        "X-FHIR-Read-After",
    )
)


class _Preflight:
    """The route of a preflight answered here, as the request metrics, logs and spans read it
    (`scope["route"].path`): a label of its own, not `unmatched`, which means no route served."""

    path = "cors-preflight"


PREFLIGHT_ROUTE = _Preflight()
# Short: an origin removed from the list stops being preflighted-through within ten minutes.
MAX_AGE_SECONDS = 600


def speaks_cors(path: str) -> bool:
    """Whether `path` answers cross-origin requests."""
    return path in CORS_PATHS or any(
        path == prefix or path.startswith(prefix + "/") for prefix in CORS_PREFIXES
    )


def _with_vary_origin(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` with `Origin` added to its `Vary` (one header, merged with what is there)."""
    for n, (name, value) in enumerate(headers):
        if name.lower() == b"vary":
            if value.strip() == b"*" or b"origin" in value.lower():
                return headers
            return [*headers[:n], (name, value + b", Origin"), *headers[n + 1 :]]
    return [*headers, (b"vary", b"Origin")]


class Cors:
    def __init__(self, app: ASGIApp, *, origins: Callable[[], Collection[str]]) -> None:
        self.app = app
        self.origins = origins

    def _allowed(self, origin: str) -> bool:
        # Browsers send the origin in lowercase; the list is kept normalized (settings.web_origin)
        return origin != "null" and origin in self.origins()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not speaks_cors(scope["path"]):
            await self.app(scope, receive, send)
            return
        origin = ""
        preflight = False
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"access-control-request-method":
                preflight = True
        allowed = bool(origin) and self._allowed(origin)
        if preflight and origin and scope["method"] == "OPTIONS":
            scope["route"] = PREFLIGHT_ROUTE
            await self._preflight(send, origin if allowed else None)
            return
        added: list[tuple[bytes, bytes]] = []
        if allowed:
            added = [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-expose-headers", EXPOSE_HEADERS.encode()),
            ]

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = _with_vary_origin(list(message.get("headers", ())))
                message["headers"] = [*headers, *added]
            await send(message)

        await self.app(scope, receive, with_cors)

    @staticmethod
    async def _preflight(send: Send, origin: str | None) -> None:
        headers = [(b"vary", b"Origin"), (b"content-length", b"0")]
        if origin is not None:
            headers += [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-methods", ALLOW_METHODS.encode()),
                (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
                (b"access-control-max-age", str(MAX_AGE_SECONDS).encode()),
            ]
        await send(
            {
                "type": "http.response.start",
                "status": 204 if origin is not None else 403,
                "headers": headers,
            }
        )
        await send({"type": "http.response.body", "body": b""})
