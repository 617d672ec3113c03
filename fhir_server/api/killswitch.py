"""The write kill-switch (`FHIR_WRITES_DISABLED=true`): every request that could write answers 503
while reads go on. Installed only when the switch is on, so it costs nothing otherwise."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from fhir_server.api.errors import Surface, rendered, send_answer
from fhir_server.errors import Unavailable

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
            # an OperationOutcome on every path, the JSON APIs' included (openapi.yaml)
            refusal = Unavailable("writes are switched off for maintenance; reads go on")
            status, media, body, _ = rendered(Surface.FHIR, refusal)
            await send_answer(send, status, media, body, {"retry-after": RETRY_AFTER_SECONDS})
            return
        await self.app(scope, receive, send)
