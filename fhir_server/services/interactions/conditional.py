"""The search behind conditional interactions: create (If-None-Exist), update (`PUT [type]?...`),
patch, delete (`DELETE [type]?...`) and a transaction's conditional references; any search the
server supports.

Criteria are parsed strictly: an unknown parameter is a 400, never ignored, because ignoring a
criterion would match too much. Result parameters (`_count`, `_page`, `_include`, ...) would change
which resources match, or mean nothing here: 400 too. The search runs with the caller's access
filter, in SQL, so a resource the caller cannot see never matches: a condition never reveals it,
and it is never counted among "several" (docs/architecture.md, conditional interactions).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from urllib.parse import parse_qsl

from fhir_server.errors import BadRequest, PreconditionFailed
from fhir_server.search.query import RESULT_PARAMETERS, parse_search
from fhir_server.services.context import Context
from fhir_server.storage import repository
from fhir_server.storage.search_sql import search_statement, search_types
from fhir_server.storage.sql import Connection, fetch_all

# What the URL of any interaction may carry (R4 http.html#parameters): formatting parameters,
# which ride along on a conditional request's URL without being criteria.
URL_PARAMETERS = frozenset({"_format", "_pretty"})


def refuse_criteria_in_create(names: Iterable[str], instead: str, where: str) -> None:
    """400 for search parameters in the URL of a create, which takes none: some clients send
    them for another server's conditional create (fhirpy's `get_or_create`), and ignoring them
    would create a duplicate where the client expected a match. `where`: the location of the
    URL (`http` for the request's own; a Bundle entry's `request.url`)."""
    for name in names:
        if name not in URL_PARAMETERS:
            raise BadRequest(
                f"`{name}` in the URL of a create is not supported: {instead}",
                expression=(f"http.{name}" if where == "http" else where,),
            )


def criteria_pairs(criteria: str) -> list[tuple[str, str]]:
    """The search parameters of conditional criteria (`identifier=a|b` or `Patient?identifier=..`)."""
    text = criteria.split("?", 1)[1] if "?" in criteria else criteria
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise BadRequest(f"cannot parse the conditional criteria `{criteria}`") from None
    pairs = [(name, value) for name, value in pairs if name not in URL_PARAMETERS]
    for name, _ in pairs:
        if name in RESULT_PARAMETERS or name.split(":")[0] in {"_include", "_revinclude"}:
            raise BadRequest(
                f"`{name}` is a result parameter, not a criterion of a conditional interaction",
                code="not-supported",
            )
    if not pairs:
        raise BadRequest("conditional criteria must not be empty")
    return pairs


async def matching_ids(
    ctx: Context, conn: Connection, resource_type: str, criteria: str, *, limit: int
) -> list[str]:
    """Ids of up to `limit` resources the criteria match among those the caller may see."""
    pairs = criteria_pairs(criteria)
    query = parse_search(
        (resource_type,),
        [*pairs, ("_count", str(limit))],
        max_count=limit,
        max_parameters=ctx.settings.max_search_parameters + 1,  # and the `_count` added here
    )
    grants = ctx.guard.grants("search", search_types(query))
    statement, _ = search_statement(query, grants, local_bases=ctx.local_bases, now=ctx.clock())
    return [row[1] for row in await fetch_all(conn, statement)][:limit]


# Conditional writes lock one of this many advisory-lock slots per criteria: a bound on the locks
# a transaction Bundle full of conditional entries holds (PostgreSQL's shared lock table is
# `max_locks_per_transaction` x connections), at the price of rare waits between unrelated criteria.
LOCK_SLOTS = 256


def lock_slot(resource_type: str, criteria: str) -> int:
    """The advisory-lock slot of conditional criteria; the same criteria in any order, the same
    slot."""
    key = f"{resource_type}?" + "&".join(
        f"{name}={value}" for name, value in sorted(criteria_pairs(criteria))
    )
    return zlib.crc32(key.encode()) % LOCK_SLOTS


async def serialize(conn: Connection, slots: Iterable[int]) -> None:
    """Queue conditional writes with the same criteria behind each other until the transaction
    ends, so that two racing `PUT Patient?identifier=x` (or If-None-Exist creates) cannot both
    find nothing and both create. Transaction-scoped advisory locks, nothing to release; taken in
    ascending order, all before any row lock, so that two Bundles never wait for each other in a
    cycle."""
    for slot in sorted(set(slots)):
        await repository.lock_conditional_slot(conn, slot)


async def single_match(
    ctx: Context, conn: Connection, resource_type: str, criteria: str, *, interaction: str
) -> str | None:
    """The id of the one resource the criteria match, None for no match; 412 for several."""
    ids = await matching_ids(ctx, conn, resource_type, criteria, limit=2)
    if len(ids) > 1:
        raise PreconditionFailed(
            f"the {interaction} criteria `{criteria}` match more than one `{resource_type}`",
            code="duplicate",
        )
    return ids[0] if ids else None
