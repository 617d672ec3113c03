"""patch with JSON Patch (RFC 6902); the result is validated like any write. Conditional patch."""

from __future__ import annotations

from typing import Any

import jsonpatch

from fhir_server.errors import BadRequest, Gone, NotFound, Unprocessable
from fhir_server.services import conditional
from fhir_server.services.access import (
    check_result,
    check_stored,
    hidden,
    protect_links,
    protect_meta,
    unrestricted,
)
from fhir_server.services.context import Context
from fhir_server.services.outcome import Result
from fhir_server.services.resources import new_version, parse_json, validated
from fhir_server.services.update import check_precondition
from fhir_server.storage import repository
from fhir_server.storage.sql import Connection


def _operations(body: Any) -> jsonpatch.JsonPatch:
    if not isinstance(body, list) or not all(isinstance(op, dict) for op in body):
        raise BadRequest("a JSON Patch body must be an array of operation objects")
    try:
        return jsonpatch.JsonPatch(body)
    except (jsonpatch.InvalidJsonPatch, TypeError, ValueError) as exc:
        raise BadRequest(f"invalid JSON Patch: {exc}") from None


async def patch(
    ctx: Context,
    conn: Connection,
    resource_type: str,
    id: str,
    body: Any,
    *,
    if_match: int | None = None,
) -> Result:
    operations = _operations(body)
    guard = ctx.guard
    locked = await repository.lock_current(conn, resource_type, id)
    if locked is None:
        if not unrestricted(guard, "patch", resource_type):
            raise hidden(guard, "patch", resource_type, id)
        raise NotFound(f"`{resource_type}/{id}` is not known")
    check_stored(guard, "patch", resource_type, id, locked.compartments, locked.created_by)
    check_precondition(f"{resource_type}/{id}", locked.version_id, if_match)
    if locked.content is None:
        raise Gone(f"`{resource_type}/{id}` was deleted")
    stored = parse_json(locked.content)
    try:
        patched = operations.apply(parse_json(locked.content))
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise Unprocessable(f"the patch cannot be applied: {exc}", code="processing") from None
    if not isinstance(patched, dict) or patched.get("id") != id:
        raise Unprocessable("a patch may not change the resource's `id`", expression=["id"])
    resource = validated(ctx, patched, resource_type=resource_type)
    protect_meta(guard, resource, stored)
    protect_links(guard, resource, stored)
    version = new_version(
        ctx,
        resource,
        id=id,
        version_id=locked.version_id + 1,
        last_updated=ctx.clock(),
        method="PATCH",
    )
    check_result(guard, "patch", version, locked.created_by)
    await repository.write_version(conn, version)
    guard.changed(f"{resource_type}/{id}", stored, resource)
    return Result.written(200, version)


async def conditional_patch(
    ctx: Context,
    conn: Connection,
    resource_type: str,
    criteria: str,
    body: Any,
    *,
    if_match: int | None = None,
) -> Result:
    """`PATCH [type]?criteria` (R4 http.html#patch), among the resources the caller may see: the
    patch of the one match; no match, 404 (a patch creates nothing); several, 412."""
    _operations(body)
    match = await conditional.single_match(
        ctx, conn, resource_type, criteria, interaction="conditional patch"
    )
    if match is None:
        raise NotFound(f"no `{resource_type}` matches the conditional patch criteria `{criteria}`")
    return await patch(ctx, conn, resource_type, match, body, if_match=if_match)
