"""The search behind conditional interactions (If-None-Exist): any search the server supports.

Criteria are parsed strictly: an unknown parameter is a 400, never ignored, because ignoring a
criterion would match too much. The search runs with the caller's access filter, so a condition
never reveals a resource the caller cannot see.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from fhir_server.errors import BadRequest
from fhir_server.search.query import RESULT_PARAMETERS, parse_search
from fhir_server.services.context import Context
from fhir_server.storage.search_sql import search_statement
from fhir_server.storage.sql import Connection, fetch_all


async def matching_ids(
    ctx: Context, conn: Connection, resource_type: str, criteria: str, *, limit: int
) -> list[str]:
    text = criteria.split("?", 1)[1] if "?" in criteria else criteria
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise BadRequest(f"cannot parse the conditional criteria `{criteria}`") from None
    if not [name for name, _ in pairs if name not in RESULT_PARAMETERS]:
        raise BadRequest("conditional criteria must not be empty")
    query = parse_search(
        (resource_type,),
        [*pairs, ("_count", str(limit))],
        max_count=limit,
        max_parameters=ctx.settings.max_search_parameters + 1,  # and the `_count` added here
    )
    statement, _ = search_statement(query, ctx.guard.access("search"), local_bases=ctx.local_bases)
    return [row[1] for row in await fetch_all(conn, statement)][:limit]
