"""The search behind conditional interactions (If-None-Exist).

Until the search engine lands, conditional criteria support `_id` and `identifier` (token:
`value`, `system|value`), which is what clients use to make creates idempotent; any other parameter
is refused with 400 rather than ignored, because ignoring a criterion would match too much.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from fhir_server.errors import BadRequest
from fhir_server.storage import repository
from fhir_server.storage.sql import Connection


def _criteria(query: str) -> tuple[list[str], list[dict[str, Any]]]:
    query = query.split("?", 1)[1] if "?" in query else query
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise BadRequest(f"cannot parse the conditional criteria `{query}`") from None
    ids: list[str] = []
    containments: list[dict[str, Any]] = []
    for name, value in pairs:
        if name == "_id":
            ids.append(value)
        elif name == "identifier":
            system, bar, code = value.partition("|")
            token = {"system": system, "value": code} if bar else {"value": value}
            if bar and not system:
                token = {"value": code}
            containments.append({"identifier": [token]})
        else:
            raise BadRequest(
                f"conditional criteria support `_id` and `identifier`; `{name}` is not supported",
                code="not-supported",
            )
    if not ids and not containments:
        raise BadRequest("conditional criteria must not be empty")
    return ids, containments


async def matching_ids(
    conn: Connection, resource_type: str, query: str, *, limit: int
) -> list[str]:
    ids, containments = _criteria(query)
    return await repository.find_ids(
        conn, resource_type, ids=ids, containing=containments, limit=limit
    )
