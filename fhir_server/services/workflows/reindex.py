"""Rebuild the search index of every live resource (`fhir-server reindex`).

Needed when the set of search parameters or the way values are indexed changes, and after the
migration that created the index over existing data. Runs in batches, each in its own
transaction, so it can run while the server serves; a resource written meanwhile is indexed by
its own write.
"""

from __future__ import annotations

import logging

from fhir_server.search.index import index_rows
from fhir_server.services.interactions.versions import parse_json
from fhir_server.settings import Settings
from fhir_server.storage import repository
from fhir_server.storage.database import Database

log = logging.getLogger(__name__)


async def reindex(settings: Settings, database_url: str, *, batch: int = 500) -> int:
    """Reindex everything; the number of resources indexed."""
    local_bases = tuple(b for b in (settings.base_url, *settings.local_bases) if b)
    db = Database(database_url, pool_size=1, pooled=settings.pooled)
    await db.open()
    done = 0
    after = ("", "")
    try:
        while True:
            async with db.connection() as conn:
                page = await repository.live_resources(conn, after, batch)
            if not page:
                return done
            entries = [
                (t, i, index_rows(parse_json(content), local_bases=local_bases))
                for t, i, content in page
            ]
            async with db.transaction() as conn:
                await repository.replace_index(conn, entries)
            done += len(page)
            after = (page[-1][0], page[-1][1])
            log.info("reindexed %d resources", done)
    finally:
        await db.close()
