"""update (PUT), with If-Match and update-as-create; conditional update (`PUT [type]?criteria`)."""

from __future__ import annotations

from typing import Any

from fhir_server.errors import BadRequest, MethodNotAllowed, PreconditionFailed
from fhir_server.services.context import Context
from fhir_server.services.formats.etags import ANY_VERSION, version_of
from fhir_server.services.interactions import conditional
from fhir_server.services.interactions.create import create, creation
from fhir_server.services.interactions.versions import check_id, parse_json, validated
from fhir_server.services.interactions.writing import check_locked, write_next
from fhir_server.services.offload import cpu
from fhir_server.services.result import Result
from fhir_server.storage import repository
from fhir_server.storage.sql import Connection


def parse_if_match(value: str | None) -> int | None:
    """The version an If-Match header names (`W/"3"` or `"3"`: formats/etags.py), `ANY_VERSION`
    for `*`, or None when absent; a value that names no version is a 412."""
    if value is None:
        return None
    if value.strip() == "*":
        return ANY_VERSION
    version = version_of(value)
    if version is None:
        raise PreconditionFailed(f"If-Match `{value}` names no version of this resource")
    return version


def check_precondition(
    resource: str, current_version: int | None, if_match: int | None, *, deleted: bool = False
) -> None:
    """412 unless `if_match` (parse_if_match) holds for the resource's current version
    (None: it does not exist): the version it names, or with `*` any that is not a deletion."""
    if if_match is None:
        return
    if if_match == ANY_VERSION:
        if current_version is not None and not deleted:
            return
        found = "was deleted" if deleted else "does not exist"
    elif current_version == if_match:
        return
    else:
        found = "does not exist" if current_version is None else f"is at version {current_version}"
    raise PreconditionFailed(f"{asked(if_match)} but `{resource}` {found}")


def asked(if_match: int) -> str:
    """What an If-Match value asks for, in words."""
    if if_match == ANY_VERSION:
        return "If-Match `*` asks for a current version"
    return f"If-Match asks for version {if_match}"


async def update(
    ctx: Context,
    conn: Connection,
    resource_type: str,
    id: str,
    body: Any,
    *,
    if_match: int | None = None,
) -> Result:
    check_id(id)
    resource = await cpu(validated, ctx, body, resource_type=resource_type)
    body_id = resource.get("id")
    if body_id != id:
        raise BadRequest(
            "the body has no `id`"
            if body_id is None
            else f"the body's id `{body_id}` does not match `{id}` in the URL",
            expression=["id"],
        )
    guard = ctx.guard
    for _ in range(2):
        locked = await repository.lock_current(conn, resource_type, id)
        if locked is None:
            version = await cpu(creation, ctx, resource, id, method="PUT")
            check_precondition(f"{resource_type}/{id}", None, if_match)
            if not ctx.settings.update_create:
                raise MethodNotAllowed(
                    f"`{resource_type}/{id}` does not exist and this server does not create "
                    "resources by update"
                )
            if await repository.insert_new(conn, version):
                guard.changed(f"{resource_type}/{id}", None, resource)
                return Result.written(201, version)
            # Someone created it between our lock attempt and insert: take the update path.
            continue
        # the stored version first: nothing about it (not even its version) before that
        await check_locked(ctx, conn, "update", resource_type, id, locked)
        check_precondition(
            f"{resource_type}/{id}", locked.version_id, if_match, deleted=locked.deleted
        )
        stored = None if locked.content is None else parse_json(locked.content)
        version = await write_next(
            ctx, conn, "update", resource_type, id, locked, resource, stored, method="PUT"
        )
        return Result.written(201 if locked.deleted else 200, version)
    raise PreconditionFailed(f"`{resource_type}/{id}` is being created concurrently; retry")


async def conditional_update(
    ctx: Context,
    conn: Connection,
    resource_type: str,
    criteria: str,
    body: Any,
    *,
    if_match: int | None = None,
) -> Result:
    """`PUT [type]?criteria` (R4 http.html#cond-update), among the resources the caller may see:
    no match and no `id` in the body, a create with a server id (through the same create as a
    POST); no match and an `id`, the update (or update-as-create) of that id, exactly as `PUT
    [type]/id`; one match, its update (a different `id` in the body is a 400); several, 412. A
    match the caller may not see is no match (docs/architecture.md, conditional interactions)."""
    resource = await cpu(validated, ctx, body, resource_type=resource_type)
    await conditional.serialize(conn, [conditional.lock_slot(resource_type, criteria)])
    match = await conditional.single_match(
        ctx, conn, resource_type, criteria, interaction="conditional update"
    )
    return await apply_conditional_update(
        ctx, conn, resource_type, match, resource, if_match=if_match
    )


def conditional_target(
    resource_type: str, match: str | None, resource: dict[str, Any], if_match: int | None
) -> str | None:
    """The id a conditional update writes once its criteria resolved to `match` (None: no
    match): the match; with no match, the body's id (an update, or update-as-create); None for a
    create under a new server id. A body id that is not the match's is a 400; If-Match with
    nothing to match, a 412."""
    body_id = resource.get("id")
    if match is None:
        if body_id is None and if_match is not None:
            raise PreconditionFailed(f"{asked(if_match)} but no `{resource_type}` matches")
        return None if body_id is None else str(body_id)
    if body_id is not None and body_id != match:
        raise BadRequest(
            f"the body's id `{body_id}` is not the id of the resource the criteria match",
            expression=["id"],
        )
    return match


async def apply_conditional_update(
    ctx: Context,
    conn: Connection,
    resource_type: str,
    match: str | None,
    resource: dict[str, Any],
    *,
    if_match: int | None = None,
) -> Result:
    """A conditional update once its criteria resolved to `match` (None: no match)."""
    target = conditional_target(resource_type, match, resource, if_match)
    if target is None:
        return await create(ctx, conn, resource_type, resource, method="PUT")
    return await update(
        ctx, conn, resource_type, target, {**resource, "id": target}, if_match=if_match
    )
