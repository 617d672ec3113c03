"""delete: soft; history keeps every version and read then answers 410. Conditional delete."""

from __future__ import annotations

from fhir_server.services.access.enforce import check_type
from fhir_server.services.context import Context
from fhir_server.services.interactions import conditional
from fhir_server.services.interactions.versions import deletion
from fhir_server.services.interactions.writing import lock_stored
from fhir_server.storage import repository
from fhir_server.storage.sql import Connection


async def delete(ctx: Context, conn: Connection, resource_type: str, id: str) -> int | None:
    """Delete the resource; return the deletion's version id, or None if it was already deleted."""
    guard = ctx.guard
    locked = await lock_stored(ctx, conn, "delete", resource_type, id)
    if locked.deleted:
        return None
    version = deletion(
        ctx,
        resource_type,
        id,
        version_id=locked.version_id + 1,
        last_updated=ctx.clock(),
        compartments=locked.compartments,
    )
    await repository.write_version(conn, version)
    guard.changed(f"{resource_type}/{id}", {}, None)
    return version.version_id


async def conditional_delete(
    ctx: Context, conn: Connection, resource_type: str, criteria: str
) -> tuple[str | None, int | None]:
    """`DELETE [type]?criteria` (R4 http.html#cdelete), among the resources the caller may see:
    no match, nothing to do (a success); one, its ordinary delete; several, 412 (the
    CapabilityStatement says `conditionalDelete: single`). Returns the id deleted (None for no
    match) and the deletion's version id (None when nothing new was written)."""
    check_type(ctx.guard, "delete", resource_type)
    await conditional.serialize(conn, [conditional.lock_slot(resource_type, criteria)])
    match = await conditional.single_match(
        ctx, conn, resource_type, criteria, interaction="conditional delete"
    )
    if match is None:
        return None, None
    return match, await delete(ctx, conn, resource_type, match)
