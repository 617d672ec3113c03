"""read and vread, inside what the caller may see (the filter is in the statement's WHERE)."""

from __future__ import annotations

from compartments.engine import Target
from fhir_server.errors import Gone, NotFound
from fhir_server.services.access.enforce import hidden, patients_of, unrestricted
from fhir_server.services.access.guard import Guard
from fhir_server.services.context import Context
from fhir_server.storage import repository
from fhir_server.storage.repository import StoredVersion
from fhir_server.storage.sql import Connection


async def read(
    ctx: Context, conn: Connection, resource_type: str, id: str, *, operation: str = "read"
) -> StoredVersion:
    guard = ctx.guard
    found = await _current(guard, conn, resource_type, id, operation)
    if found is None:
        if not unrestricted(guard, operation, resource_type):
            if not await break_glass(ctx, conn, operation, resource_type, id):
                raise hidden(guard, operation, resource_type, id)
            found = await repository.read_current(conn, resource_type, id)
        if found is None:
            raise NotFound(f"`{resource_type}/{id}` is not known")
    else:
        guard.record(
            operation,
            resource_type,
            f"{resource_type}/{id}",
            guard.type_decision(operation, resource_type),
            patients_of(found),
        )
    if found.deleted:
        raise Gone(f"`{resource_type}/{id}` was deleted")
    return found


async def _current(
    guard: Guard, conn: Connection, resource_type: str, id: str, operation: str
) -> StoredVersion | None:
    """The current version if the caller may see it. Facts still to verify (an optimistic
    guard) are verified by the same statement when the grant is the common kind, so that a
    cached read costs one round trip; if they had changed, the read is made again on new ones."""
    pending = guard.pending_epoch
    if pending is not None:
        grant = guard.grant(operation, resource_type)
        if (
            grant is not None
            and not grant.everything
            and grant.within is None
            and not grant.criteria
            and not grant.parts
        ):
            epoch, found = await repository.read_granted(
                conn, resource_type, id, grant, pending.keys
            )
            if await guard.verify(conn, epoch):
                return found
        else:
            await guard.verify(conn)
    return await repository.read_current(
        conn, resource_type, id, guard.grants(operation, (resource_type,))
    )


async def vread(
    ctx: Context, conn: Connection, resource_type: str, id: str, version: str
) -> StoredVersion:
    if resource_type in repository.UNVERSIONED:
        # written once: the current row is version 1, and there is no other
        only = await read(ctx, conn, resource_type, id)
        if version != "1":
            raise NotFound(f"`{resource_type}/{id}` has no version `{version}`")
        return only
    guard = ctx.guard
    number = int(version) if version.isdigit() and len(version) <= 9 else None
    found = (
        None
        if number is None
        else await repository.read_version(
            conn, resource_type, id, number, guard.grants("read", (resource_type,))
        )
    )
    if found is None and not unrestricted(guard, "read", resource_type):
        if not await break_glass(ctx, conn, "read", resource_type, id):
            raise hidden(guard, "read", resource_type, id)
        if number is not None:
            found = await repository.read_version(conn, resource_type, id, number)
    elif found is not None:
        guard.record(
            "read",
            resource_type,
            f"{resource_type}/{id}",
            guard.type_decision("read", resource_type),
            patients_of(found),
        )
    if found is None:
        raise NotFound(f"`{resource_type}/{id}` has no version `{version}`")
    if found.deleted:
        raise Gone(f"version `{version}` of `{resource_type}/{id}` is a deletion")
    return found


async def break_glass(
    ctx: Context, conn: Connection, operation: str, resource_type: str, id: str
) -> bool:
    """A practitioner's emergency read (purpose of use BTG with a reason, EMERGENCY_BYPASS on):
    the engine decides on the resource itself, and the decision is audited as an emergency."""
    guard = ctx.guard
    if guard.purpose_of_use != "BTG":
        return False
    stored = await repository.lock_current(conn, resource_type, id, lock=False)
    if stored is None:
        return False
    decision = guard.decide(
        operation, resource_type, Target(frozenset(stored.compartments), stored.created_by)
    )
    if not decision.emergency:
        return False
    patients = (c for c in stored.compartments if c.startswith("Patient/"))
    guard.record(operation, resource_type, f"{resource_type}/{id}", decision, patients)
    return True
