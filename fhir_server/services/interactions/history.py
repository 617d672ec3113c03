"""history for an instance, a type, or the whole system, newest first, paged by keyset."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from urllib.parse import urlencode

from compartments.engine import Decision
from fhir_server.errors import BadRequest, NotFound
from fhir_server.search.grants import Grants
from fhir_server.services.access.enforce import check_type, hidden, patients_of, unrestricted
from fhir_server.services.context import Context
from fhir_server.services.formats.bundles import bundle, history_entry
from fhir_server.services.interactions.read import break_glass
from fhir_server.storage import repository
from fhir_server.storage.cursors import decode_cursor, encode_cursor
from fhir_server.storage.repository import HistoryCursor
from fhir_server.storage.sql import Connection

SUPPORTED = frozenset({"_count", "_since", "_page", "_format", "_pretty"})


def parse_instant(name: str, value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"`{name}` must be an instant, got `{value}`", code="value") from None
    if moment.tzinfo is None:
        raise BadRequest(
            f"`{name}` must be an instant with a time zone, got `{value}`", code="value"
        )
    return moment


def parse_count(ctx: Context, value: str | None) -> int:
    if value is None:
        return ctx.settings.default_count
    if not value.isdigit() or len(value) > 9:
        raise BadRequest(f"`_count` must be a whole number, got `{value}`", code="value")
    return min(int(value), ctx.settings.max_count)


async def history(
    ctx: Context,
    conn: Connection,
    params: Mapping[str, str],
    *,
    resource_type: str | None = None,
    id: str | None = None,
) -> bytes:
    unknown = sorted(set(params) - SUPPORTED)
    if unknown:
        raise BadRequest(
            f"history does not support the parameter `{unknown[0]}`", code="not-supported"
        )
    count = parse_count(ctx, params.get("_count"))
    since = parse_instant("_since", params["_since"]) if "_since" in params else None
    after = None
    if "_page" in params:
        moment, resource_type_after, id_after, version = decode_cursor(params["_page"], 4)
        if not (
            isinstance(moment, datetime)
            and isinstance(resource_type_after, str)
            and isinstance(id_after, str)
            and isinstance(version, int)
        ):
            raise BadRequest("`_page` is not a cursor this server gave out", code="value")
        after = HistoryCursor(moment, resource_type_after, id_after, version)
    guard = ctx.guard
    grants: Grants | None = guard.grants(
        "history", None if resource_type is None else (resource_type,)
    )
    if id is not None:
        assert resource_type is not None
        # the resource as it is now decides whether its history may be seen at all
        visible = await repository.read_current(conn, resource_type, id, grants)
        if visible is None:
            if unrestricted(guard, "history", resource_type):
                raise NotFound(f"`{resource_type}/{id}` is not known")
            if not await break_glass(ctx, conn, "history", resource_type, id):
                raise hidden(guard, "history", resource_type, id)
            grants = None
        else:
            guard.record(
                "history",
                resource_type,
                f"{resource_type}/{id}",
                guard.type_decision("history", resource_type),
                patients_of(visible),
            )
    elif resource_type is not None:
        check_type(guard, "history", resource_type)
    else:
        guard.record("history", None, None, Decision(allowed=True, explanation="per type"))
    if id is not None and resource_type in repository.UNVERSIONED:
        # written once: its history is its current row
        assert visible is not None or grants is None
        current = visible or await repository.read_current(conn, resource_type, id)
        assert current is not None
        page = [replace(current, method="POST")]
        page = [v for v in page if since is None or v.last_updated >= since]
        url = f"{ctx.base_url}/{resource_type}/{id}/_history"
        links = [{"relation": "self", "url": f"{url}?{urlencode(dict(params))}"}]
        return bundle(
            "history",
            entries=[history_entry(ctx.base_url, v) for v in page],
            id=str(uuid.uuid4()),
            link=links,
            total=len(page),
        )
    page, more = await repository.history(
        conn,
        resource_type=resource_type,
        id=id,
        since=since,
        count=count,
        after=after,
        grants=grants,
        max_bytes=ctx.settings.max_search_bytes,
    )

    if id is None:
        # a type's or the server's history: its AuditEvent names the patients of the page
        guard.touched("history", frozenset().union(*map(patients_of, page)))
    path = "/".join(p for p in (resource_type, id) if p)
    url = f"{ctx.base_url}/{path + '/' if path else ''}_history"
    kept = {k: v for k, v in params.items() if k != "_page"}
    kept["_count"] = str(count)
    links = [{"relation": "self", "url": f"{url}?{urlencode({**kept, **dict(params)})}"}]
    if more and page:
        last = page[-1]
        token = encode_cursor((last.last_updated, last.resource_type, last.id, last.version_id))
        links.append({"relation": "next", "url": f"{url}?{urlencode({**kept, '_page': token})}"})
    fields: dict[str, object] = {"id": str(uuid.uuid4()), "link": links}
    if id is not None and resource_type is not None:
        fields["total"] = await repository.history_total(conn, resource_type, id, since, grants)
    return bundle("history", entries=[history_entry(ctx.base_url, v) for v in page], **fields)
