"""What update, patch and delete share: the current row of a resource that the caller may
change, locked for the rest of the transaction, and the write of its next version."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fhir_server.errors import NotFound
from fhir_server.services.access.enforce import (
    check_result,
    check_stored,
    hidden,
    protect_links,
    protect_meta,
    unrestricted,
)
from fhir_server.services.context import Context
from fhir_server.services.interactions.versions import new_version
from fhir_server.services.offload import cpu
from fhir_server.storage import repository
from fhir_server.storage.repository import Locked, NewVersion
from fhir_server.storage.sql import Connection

Run = Callable[..., Awaitable[Any]]


async def check_locked(
    ctx: Context,
    conn: Connection,
    operation: str,
    resource_type: str,
    id: str,
    locked: Locked | None,
) -> Locked:
    """The locked current row, once the caller may `operation` the resource it holds: a resource
    that is not there is a 404 to a caller who may see all of its type, else what `hidden`
    answers (nothing about a resource the caller may not see). A grant that opens a category
    only (a Consent's lab results) is asked of the row in SQL, as a read asks it."""
    guard = ctx.guard
    if locked is None:
        if not unrestricted(guard, operation, resource_type):
            raise hidden(guard, operation, resource_type, id)
        raise NotFound(f"`{resource_type}/{id}` is not known")
    check_stored(guard, operation, resource_type, id, locked.compartments, locked.created_by)
    grants = guard.grants(operation, (resource_type,))
    grant = grants[resource_type]
    narrowed = grant is not None and any(p.criteria for p in grant.parts)
    if narrowed and await repository.read_current(conn, resource_type, id, grants) is None:
        raise hidden(guard, operation, resource_type, id)
    return locked


async def lock_stored(
    ctx: Context, conn: Connection, operation: str, resource_type: str, id: str
) -> Locked:
    """`check_locked` of the current row, locked until the transaction ends."""
    locked = await repository.lock_current(conn, resource_type, id)
    return await check_locked(ctx, conn, operation, resource_type, id, locked)


async def write_next(
    ctx: Context,
    conn: Connection,
    operation: str,
    resource_type: str,
    id: str,
    locked: Locked,
    resource: dict[str, Any],
    stored: dict[str, Any] | None,
    *,
    method: str,
    run: Run = cpu,
) -> NewVersion:
    """Write `resource` as the version after `locked`: the labels and links a restricted caller
    may not change kept as stored, the result checked against the caller's compartments, and
    what changed remembered for the audit trail."""
    guard = ctx.guard
    protect_meta(guard, resource, stored)
    protect_links(guard, resource, stored)
    version: NewVersion = await run(
        new_version,
        ctx,
        resource,
        id=id,
        version_id=locked.version_id + 1,
        last_updated=ctx.clock(),
        method=method,
    )
    check_result(guard, operation, version, locked.created_by)
    await repository.write_version(conn, version)
    guard.changed(f"{resource_type}/{id}", stored, resource)
    return version
