"""search: `GET [base]/{type}?...`, `POST [base]/{type}/_search`, compartment search.

Parses the query, runs the planner's statements with the caller's access filter, and answers a
searchset Bundle: matches of one page, then `_include`/`_revinclude` resources, `self` and `next`
links with an opaque keyset cursor.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any
from urllib.parse import urlencode

import orjson

from capability.definitions import summary_elements
from compartments.engine import Decision
from fhir_server.errors import BadRequest
from fhir_server.search.fhirpath import element_keys
from fhir_server.search.grants import Grants
from fhir_server.search.query import (
    MAX_INCLUDE_DEPTH,
    Include,
    SearchQuery,
    compartment_types,
    parse_search,
)
from fhir_server.services.access.enforce import check_type, patients_among, unrestricted
from fhir_server.services.context import Context
from fhir_server.services.formats.bundles import bundle
from fhir_server.services.offload import HEAVY, cpu
from fhir_server.storage.cursors import encode_cursor
from fhir_server.storage.search_sql import (
    count_statement,
    include_statement,
    include_types,
    search_statement,
    search_types,
    sort_keys,
)
from fhir_server.storage.sql import Connection, Query, estimated_count, fetch_one, stream

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
# A page's _revinclude rows are capped: a popular target could otherwise pull in millions.
MAX_INCLUDED = 1000
# A query this long (hundreds of values) is planned off the event loop (services/offload.py).
HEAVY_QUERY_CHARS = 8192


async def search(
    ctx: Context,
    conn: Connection,
    resource_type: str | None,
    params: Iterable[tuple[str, str]],
    *,
    compartment: tuple[str, str] | None = None,
    strict: bool = True,
) -> bytes:
    """The searchset Bundle for a type (or `None` with a compartment: every type in it)."""
    types, path = _types_and_path(resource_type, compartment)
    params = list(params)
    if sum(len(name) + len(value) for name, value in params) >= HEAVY_QUERY_CHARS:
        # hundreds of values: planning and compiling its SQL takes tens of milliseconds
        HEAVY.set(True)
    query = await cpu(
        parse_search,
        types,
        params,
        strict=strict,
        default_count=ctx.settings.default_count,
        max_count=ctx.settings.max_count,
        compartment="/".join(compartment) if compartment else None,
        max_parameters=ctx.settings.max_search_parameters,
    )
    if len(types) == 1:
        check_type(ctx.guard, "search", types[0])
    else:
        # every type is filtered by its own grant; types the caller may not see give nothing
        ctx.guard.record("search", None, path, Decision(allowed=True, explanation="per type"))
    return await run(ctx, conn, query, path)


def _types_and_path(
    resource_type: str | None, compartment: tuple[str, str] | None
) -> tuple[tuple[str, ...], str]:
    if compartment is None:
        assert resource_type is not None
        return (resource_type,), resource_type
    comp_type, comp_id = compartment
    members = compartment_types(comp_type)
    if resource_type is None:
        return tuple(sorted(members)), f"{comp_type}/{comp_id}/*"
    if resource_type not in members:
        raise BadRequest(
            f"`{resource_type}` resources are not in the `{comp_type}` compartment",
            code="not-supported",
        )
    return (resource_type,), f"{comp_type}/{comp_id}/{resource_type}"


async def run(ctx: Context, conn: Connection, query: SearchQuery, path: str) -> bytes:
    url = f"{ctx.base_url}/{path}"
    now = ctx.clock()
    fields: dict[str, Any] = {"id": str(uuid.uuid4())}
    echo = [*query.echo]
    grants = _grants(ctx, query)
    if query.summary == "count" or query.total == "accurate":
        counting = await cpu(count_statement, query, grants, local_bases=ctx.local_bases, now=now)
        row = await fetch_one(conn, counting)
        assert row is not None
        fields["total"] = int(row[0])
    elif query.total == "estimate" and _sees_all(ctx, query):
        # an estimate comes from table statistics, which know of rows the caller may not see
        fields["total"] = await _estimate(conn, query, ctx, now)
    links = [{"relation": "self", "url": _link(url, echo, query.cursor)}]
    fields["link"] = links
    if query.summary == "count":
        return bundle("searchset", entries=[], **fields)

    statement, _ = await cpu(search_statement, query, grants, local_bases=ctx.local_bases, now=now)
    budget = _Budget(ctx.settings.max_search_bytes)
    page, more = await _page(conn, statement, query.count, budget)
    if more and page:
        links.append(
            {"relation": "next", "url": _link(url, echo, encode_cursor(sort_keys(page[-1])))}
        )
    if query.total == "estimate" and "total" in fields:
        fields["total"] = _proven(fields["total"], query, len(page), more)

    entries = [_entry(ctx, query, r[0], r[1], r[2], "match") for r in page]
    seen = {(r[0], r[1]) for r in page}
    compartments: list[Sequence[str]] = [r[3] for r in page]
    sources = [(r[0], r[1]) for r in page]
    entries += await _included(ctx, conn, query, sources, seen, budget, compartments)
    # the search's AuditEvent names the patients whose data it returned, and nobody else
    ctx.guard.touched("search", patients_among(c for stored in compartments for c in stored))
    return bundle("searchset", entries=entries, **fields)


class _Budget:
    """What is left of the bytes of JSON one search may hold (`FHIR_MAX_SEARCH_BYTES`)."""

    def __init__(self, total: int) -> None:
        self.left = total

    def take(self, content: str, *, first: bool = False) -> bool:
        """Whether `content` fits, and if so count it; the first match always fits."""
        if len(content) > self.left and not first:
            self.left = 0
            return False
        self.left -= len(content)
        return True


async def _page(
    conn: Connection, statement: Query, count: int, budget: _Budget
) -> tuple[list[tuple[Any, ...]], bool]:
    """The page's rows, `count` of them or fewer where their JSON reaches the budget; and
    whether more follow (the statement asks for one row more than a page)."""
    page: list[tuple[Any, ...]] = []
    more = False
    async for row in stream(conn, statement):
        if more:
            continue  # read to the end, not kept
        if len(page) == count or not budget.take(row[2], first=not page):
            more = True
            continue
        page.append(row)
    return page, more


async def _included(
    ctx: Context,
    conn: Connection,
    query: SearchQuery,
    sources: list[tuple[str, str]],
    seen: set[tuple[str, str]],
    budget: _Budget,
    compartments: list[Sequence[str]],
) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    direct = [i for i in query.includes if not i.iterate]
    iterating = [i for i in query.includes if i.iterate]
    frontier = sources
    for depth in range(MAX_INCLUDE_DEPTH + 1):
        # `:iterate` is applied to the matches too, and then ALSO to what was included (R4
        # search.html#revinclude); a plain include only to the matches
        wanted: list[Include] = [*direct, *iterating] if depth == 0 else iterating
        if not wanted or not frontier:
            break
        found: list[tuple[str, str]] = []
        for include in wanted:
            if not include.reverse and include.source_type not in {"*", *(t for t, _ in frontier)}:
                continue
            grants = ctx.guard.grants("search", include_types(include))
            statement = include_statement(include, frontier, grants, limit=MAX_INCLUDED)
            # beyond the budget, as beyond MAX_INCLUDED, included resources are left out
            async for resource_type, id, content, stored in stream(conn, statement):
                if (resource_type, id) in seen or not budget.take(content):
                    continue
                seen.add((resource_type, id))
                found.append((resource_type, id))
                compartments.append(stored)
                entries.append(_entry(ctx, query, resource_type, id, content, "include"))
        frontier = found
    return entries


def _entry(
    ctx: Context, query: SearchQuery, resource_type: str, id: str, content: str, mode: str
) -> dict[str, Any]:
    resource: Any = orjson.Fragment(content)
    # R4 search.html#elements: "the list of elements does not apply to included resources";
    # `_summary` does (the spec is silent; a summary of a page is a summary of all of it)
    if query.summary in {"true", "text", "data"} or (query.elements and mode == "match"):
        resource = _subset(orjson.loads(content), query)
    return {
        "fullUrl": f"{ctx.base_url}/{resource_type}/{id}",
        "resource": resource,
        "search": {"mode": mode},
    }


_ALWAYS = frozenset({"resourceType", "id", "meta"})


def _subset(resource: dict[str, Any], query: SearchQuery) -> dict[str, Any]:
    """`_summary=true|text|data` or `_elements`, marked SUBSETTED as R4 asks."""
    resource_type = resource["resourceType"]
    if query.summary == "true":
        kept = _keys(resource_type, summary_elements()[resource_type])
        subset = {k: v for k, v in resource.items() if k in _ALWAYS or k in kept}
    elif query.summary == "data":
        subset = {k: v for k, v in resource.items() if k != "text"}
    elif query.summary == "text":
        subset = {k: v for k, v in resource.items() if k in {*_ALWAYS, "text"}}
    elif query.elements[0].startswith("-"):  # `_elements=-text,-contact`: all but these
        left_out = _keys(resource_type, frozenset(e[1:] for e in query.elements))
        subset = {k: v for k, v in resource.items() if k in _ALWAYS or k not in left_out}
    else:
        kept = _keys(resource_type, frozenset(query.elements))
        subset = {k: v for k, v in resource.items() if k in _ALWAYS or k in kept}
    meta = dict(subset.get("meta", {}))
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    subset["meta"] = meta
    return subset


@lru_cache(maxsize=1024)
def _keys(resource_type: str, elements: frozenset[str]) -> frozenset[str]:
    """The JSON keys of a resource that carry the top-level `elements` (R4 names: `value` or
    `value[x]` for `valueQuantity`, `birthDate` for `birthDate` and `_birthDate`)."""
    return frozenset(k for name in elements for k in element_keys(resource_type, name))


def _link(url: str, echo: list[tuple[str, str]], cursor: str | None) -> str:
    params = [*echo, ("_page", cursor)] if cursor else echo
    return f"{url}?{urlencode(params)}" if params else url


def _grants(ctx: Context, query: SearchQuery) -> Grants:
    """The caller's grants of every type a statement of `query` filters: computed here, handed
    to the planner as values."""
    return ctx.guard.grants("search", search_types(query))


def _sees_all(ctx: Context, query: SearchQuery) -> bool:
    return all(unrestricted(ctx.guard, "search", t) for t in query.resource_types)


def _proven(estimate: int, query: SearchQuery, on_page: int, more: bool) -> int:
    """An estimate no lower than what the page proves: the first page without a next one holds
    every match (the total is then exact); otherwise at least the page's matches, and one more
    where a next page follows. A keyset cursor carries no offset, so a later page proves only
    its own matches."""
    if query.cursor is None and not more:
        return on_page
    return max(estimate, on_page + (1 if more else 0))


async def _estimate(conn: Connection, query: SearchQuery, ctx: Context, now: datetime) -> int:
    """The planner's row estimate for the query: cheap, and R4's `_total=estimate`."""
    count = count_statement(query, _grants(ctx, query), local_bases=ctx.local_bases, now=now)
    return await estimated_count(conn, count)
