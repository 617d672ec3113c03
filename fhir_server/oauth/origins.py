"""The origins of registered clients' redirect URIs, which CORS admits beside
`FHIR_CORS_ORIGINS` (docs/security.md#browser-apps-cors).

CORS asks on every request, synchronously, so the set is kept in memory: loaded as the server
starts, reloaded after a registration in this process, and every `REFRESH_SECONDS` for clients
that another process or `fhir-server client add` registered.
"""

from __future__ import annotations

import asyncio
import logging

from fhir_server.settings import web_origin
from fhir_server.storage import oauth
from fhir_server.storage.database import Database

log = logging.getLogger(__name__)

REFRESH_SECONDS = 10.0


class ClientOrigins:
    def __init__(self) -> None:
        self.current: frozenset[str] = frozenset()

    async def reload(self, db: Database) -> None:
        async with db.connection() as conn:
            uris = await oauth.redirect_uris(conn)
        self.current = frozenset(o for o in map(web_origin, uris) if o is not None)

    async def keep_fresh(self, db: Database, every_seconds: float = REFRESH_SECONDS) -> None:
        """Load now, then every `every_seconds`; a failure (the database unreachable, or not
        migrated yet) keeps the last set and is tried again."""
        while True:
            try:
                await self.reload(db)
            except Exception as exc:
                log.warning(
                    "loading the registered clients' origins failed: %s", type(exc).__name__
                )
            await asyncio.sleep(every_seconds)
