"""delete: soft; history keeps every version and read then answers 410. Conditional delete."""

from __future__ import annotations

from fhir_server.errors import PreconditionFailed
from fhir_server.services.access.enforce import check_type
from fhir_server.services.context import Context
from fhir_server.services.interactions import conditional
from fhir_server.services.interactions.update import asked, check_precondition
from fhir_server.services.interactions.versions import check_id, deletion
from fhir_server.services.interactions.writing import lock_stored
from fhir_server.storage import repository
from fhir_server.storage.sql import Connection


async def delete(
    ctx: Context,
    conn: Connection,
    resource_type: str,
    id: str,
    *,
    if_match: int | None = None,
) -> int | None:
    """Delete the resource; return the deletion's version id, or None if it was already deleted.
    With `if_match` (update.parse_if_match), only the version it names: else 412."""
    check_id(id)
    guard = ctx.guard
    locked = await lock_stored(ctx, conn, "delete", resource_type, id)
    check_precondition(f"{resource_type}/{id}", locked.version_id, if_match, deleted=locked.deleted)
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
    ctx: Context,
    conn: Connection,
    resource_type: str,
    criteria: str,
    *,
    if_match: int | None = None,
) -> tuple[str | None, int | None]:
    """`DELETE [type]?criteria` (R4 http.html#cdelete), among the resources the caller may see:
    no match, nothing to do (a success); one, its ordinary delete; several, 412 (the
    CapabilityStatement says `conditionalDelete: single`); `if_match` holds for the match, as in
    `delete`. Returns the id deleted (None for no match) and the deletion's version id (None when
    nothing new was written)."""
    check_type(ctx.guard, "delete", resource_type)
    await conditional.serialize(conn, [conditional.lock_slot(resource_type, criteria)])
    match = await conditional.single_match(
        ctx, conn, resource_type, criteria, interaction="conditional delete"
    )
    if match is None:
        if if_match is not None:
            raise PreconditionFailed(f"{asked(if_match)} but no `{resource_type}` matches")
        return None, None
    return match, await delete(ctx, conn, resource_type, match, if_match=if_match)
