"""`Idempotency-Key` on a POST, for the FHIR API and the Patient Service API alike
(docs/patient-api.md#idempotency-key): the first response is kept with the key, in the request's
transaction, and replayed to the same caller for the same body; another body with the key is a
Conflict (`idempotency_key_reused`), a key too long a BadRequest (`invalid_idempotency_key`),
each answered in the route's own error shape."""

from __future__ import annotations

from datetime import timedelta

from fastapi import Response

from fhir_server.services.context import Context
from fhir_server.storage import idempotency
from fhir_server.storage.sql import Connection


class Idempotent:
    """One request's key: `replay()` before the work (a response: answer it, nothing else),
    `keep(response)` after it, both inside the request's transaction.

    `where` names the route (`POST /fhir/Patient`): a key belongs to its caller and route.
    `body`: the bytes whose fingerprint must match for a replay (unused without a key)."""

    def __init__(
        self, ctx: Context, conn: Connection, where: str, key: str | None, body: bytes
    ) -> None:
        self.ctx, self.conn, self.key = ctx, conn, key
        self.scope = f"{ctx.actor} {where}"
        self.body = body if key else b""

    async def replay(self) -> Response | None:
        if not self.key:
            return None
        ttl = timedelta(seconds=self.ctx.settings.idempotency_ttl_seconds)
        found = await idempotency.claim(
            self.conn, self.scope, self.key, self.body, self.ctx.clock(), ttl
        )
        if found is None:
            return None
        return Response(found.body, found.status, found.headers)

    async def keep(self, response: Response) -> Response:
        if self.key:
            headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
            await idempotency.store(
                self.conn, self.scope, self.key, response.status_code, headers, bytes(response.body)
            )
        return response
