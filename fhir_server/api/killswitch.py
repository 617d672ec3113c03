"""The write kill-switch (`FHIR_WRITES_DISABLED=true`): every request that could write answers 503
while reads go on. Installed only when the switch is on, so it costs nothing otherwise."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from fhir_server.errors import Issue
from fhir_server.services.formats.operation_outcome import operation_outcome_bytes

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# POSTs that only read
READ_ONLY_POSTS = ("/_search", "/$explain-access", "/api/v1/relationships/verify")
RETRY_AFTER_SECONDS = "300"


class WritesDisabled:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in WRITE_METHODS
            and not scope["path"].endswith(READ_ONLY_POSTS)
            and scope["path"] != "/graphql"  # GraphQL mutations are refused below
        ):
            body = operation_outcome_bytes(
                [Issue("transient", "writes are switched off for maintenance; reads go on")]
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/fhir+json; charset=utf-8"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", RETRY_AFTER_SECONDS.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
