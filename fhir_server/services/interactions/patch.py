"""patch with JSON Patch (RFC 6902); the result is validated like any write. Conditional patch."""

from __future__ import annotations

from typing import Any

import jsonpatch
import jsonpointer

from fhir_server.errors import BadRequest, Gone, NotFound, Unprocessable
from fhir_server.services.context import Context
from fhir_server.services.formats.limits import check_value, input_limits
from fhir_server.services.interactions import conditional
from fhir_server.services.interactions.update import check_precondition
from fhir_server.services.interactions.versions import check_id, json_size, parse_json, validated
from fhir_server.services.interactions.writing import lock_stored, write_next
from fhir_server.services.offload import HEAVY_BYTES, cpu, in_thread
from fhir_server.services.result import Result
from fhir_server.storage.sql import Connection


def _operations(body: Any, max_operations: int) -> jsonpatch.JsonPatch:
    if not isinstance(body, list) or not all(isinstance(op, dict) for op in body):
        raise BadRequest("a JSON Patch body must be an array of operation objects")
    if len(body) > max_operations:
        raise BadRequest(
            f"the patch has {len(body)} operations; at most {max_operations} are accepted",
            code="too-costly",
        )
    try:
        return jsonpatch.JsonPatch(body)
    except (jsonpatch.InvalidJsonPatch, jsonpointer.JsonPointerException) as exc:
        raise BadRequest(f"invalid JSON Patch: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError):
        raise BadRequest("invalid JSON Patch: an operation is malformed") from None


def _apply(operations: jsonpatch.JsonPatch, document: Any, size: int, max_bytes: int) -> Any:
    """The patched document, one operation at a time. `size` estimates the document's JSON size
    from above (what `add`, `replace` and `copy` put in, never what goes out), so that a patch
    that would grow the resource beyond `max_bytes` (an array copied into itself again and
    again) is refused before it is built."""
    for index, raw in enumerate(operations.patch):
        name = raw.get("op")
        try:
            if name in {"add", "replace"}:
                size += json_size(raw.get("value"))
            elif name == "copy":
                size += json_size(jsonpointer.resolve_pointer(document, raw["from"]))
            if size > max_bytes:
                raise BadRequest(
                    f"operation {index} would make the resource larger than {max_bytes} bytes",
                    code="too-costly",
                    expression=[f"[{index}]"],
                )
            document = jsonpatch.JsonPatch([raw]).apply(document, in_place=True)
        except jsonpatch.JsonPatchTestFailed:
            raise Unprocessable(
                f"the patch cannot be applied: operation {index} (`test`) failed: the resource "
                f"does not hold the given value at `{raw.get('path')}`",
                code="processing",
            ) from None
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            raise Unprocessable(
                f"the patch cannot be applied: operation {index}: {exc}", code="processing"
            ) from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError):
            raise Unprocessable(
                f"the patch cannot be applied: operation {index} (`{name}`) does not fit the "
                "resource",
                code="processing",
            ) from None
    return document


def _patched(
    ctx: Context, operations: jsonpatch.JsonPatch, content: str, resource_type: str, id: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stored resource and the patched one, validated: CPU work, off the event loop when
    the resource is large."""
    stored = parse_json(content)
    settings = ctx.settings
    patched = _apply(operations, parse_json(content), len(content), settings.max_patch_result_bytes)
    if not isinstance(patched, dict) or patched.get("id") != id:
        raise Unprocessable("a patch may not change the resource's `id`", expression=["id"])
    check_value(patched, input_limits(settings))
    return stored, validated(ctx, patched, resource_type=resource_type)


async def patch(
    ctx: Context,
    conn: Connection,
    resource_type: str,
    id: str,
    body: Any,
    *,
    if_match: int | None = None,
) -> Result:
    check_id(id)
    operations = _operations(body, ctx.settings.max_patch_operations)
    locked = await lock_stored(ctx, conn, "patch", resource_type, id)
    check_precondition(f"{resource_type}/{id}", locked.version_id, if_match, deleted=locked.deleted)
    if locked.content is None:
        raise Gone(f"`{resource_type}/{id}` was deleted")
    content = locked.content
    run = in_thread if len(content) >= HEAVY_BYTES else cpu
    stored, resource = await run(_patched, ctx, operations, content, resource_type, id)
    version = await write_next(
        ctx, conn, "patch", resource_type, id, locked, resource, stored, method="PATCH", run=run
    )
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
    _operations(body, ctx.settings.max_patch_operations)
    match = await conditional.single_match(
        ctx, conn, resource_type, criteria, interaction="conditional patch"
    )
    if match is None:
        raise NotFound(f"no `{resource_type}` matches the conditional patch criteria `{criteria}`")
    return await patch(ctx, conn, resource_type, match, body, if_match=if_match)
