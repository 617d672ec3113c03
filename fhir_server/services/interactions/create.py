"""create, and conditional create (If-None-Exist)."""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime
from typing import Any

from fhir_server.services.access.enforce import check_result, protect_links, protect_meta
from fhir_server.services.context import Context
from fhir_server.services.interactions import conditional
from fhir_server.services.interactions.versions import new_version, validated
from fhir_server.services.offload import cpu
from fhir_server.services.result import Result
from fhir_server.storage import repository
from fhir_server.storage.audit_events import stamped_id
from fhir_server.storage.repository import NewVersion
from fhir_server.storage.sql import Connection


def new_id() -> str:
    """A UUID version 7 (RFC 9562): a millisecond timestamp, then 74 random bits.

    Time-ordered ids put new rows at the right edge of every B-tree keyed by id (the resources,
    history and search-index tables) instead of on random pages: at a million resources that keeps
    ingest from slowing down as the indexes outgrow the cache. The creation time they reveal is in
    `meta.lastUpdated` anyway; the random part keeps them unguessable.
    """
    milliseconds = time.time_ns() // 1_000_000
    random = int.from_bytes(os.urandom(10), "big")
    value = (
        (milliseconds & (1 << 48) - 1) << 80
        | 0x7 << 76  # version
        | (random >> 62 & 0xFFF) << 64
        | 0b10 << 62  # variant
        | random & (1 << 62) - 1
    )
    return str(uuid.UUID(int=value))


def id_for(resource: dict[str, Any]) -> str:
    """A new resource's id: an AuditEvent's carries its `recorded` time, which names the
    partition it is stored in (storage/audit_events.py), so that a read by id looks in one."""
    if resource.get("resourceType") == "AuditEvent" and isinstance(resource.get("recorded"), str):
        try:
            recorded = datetime.fromisoformat(resource["recorded"])
        except ValueError:
            return new_id()
        if recorded.tzinfo is not None:
            return stamped_id(recorded)
    return new_id()


def ignoring_id(body: Any) -> Any:
    """A create's body without the client's `id`: R4 (http.html#create) has the server ignore
    it, so it is not even validated (a Synthea id or an over-long one alike); the server
    assigns its own."""
    if isinstance(body, dict) and "id" in body:
        return {name: value for name, value in body.items() if name != "id"}
    return body


async def create(
    ctx: Context,
    conn: Connection,
    resource_type: str,
    body: Any,
    *,
    if_none_exist: str | None = None,
    method: str = "POST",
) -> Result:
    """A create (`POST [type]`), and the create of a conditional update that matched nothing."""
    resource = await cpu(validated, ctx, ignoring_id(body), resource_type=resource_type)
    if if_none_exist:
        await conditional.serialize(conn, [conditional.lock_slot(resource_type, if_none_exist)])
        existing = await find_existing(ctx, conn, resource_type, if_none_exist)
        if existing is not None:
            return existing
    version = await cpu(creation, ctx, resource, id_for(resource), method=method)
    inserted = await repository.insert_new(conn, version)
    assert inserted, "a fresh UUID collided"
    ctx.guard.changed(f"{resource_type}/{version.id}", None, resource)
    return Result.written(201, version)


def creation(
    ctx: Context,
    resource: dict[str, Any],
    id: str,
    *,
    method: str,
    last_updated: datetime | None = None,
) -> NewVersion:
    """The first version of a new resource, once the caller may create it as it is."""
    protect_meta(ctx.guard, resource, None)
    protect_links(ctx.guard, resource, None)
    version = new_version(
        ctx,
        resource,
        id=id,
        version_id=1,
        last_updated=last_updated or ctx.clock(),
        method=method,
    )
    check_result(ctx.guard, "create", version, ctx.actor)
    return version


async def find_existing(
    ctx: Context, conn: Connection, resource_type: str, query: str
) -> Result | None:
    """The single resource an If-None-Exist query matches; None for no match; 412 for several."""
    id = await conditional.single_match(
        ctx, conn, resource_type, query, interaction="If-None-Exist"
    )
    if id is None:
        return None
    grants = ctx.guard.grants("search", (resource_type,))
    current = await repository.read_current(conn, resource_type, id, grants)
    assert current is not None and not current.deleted
    return Result(200, current, existing=True)
