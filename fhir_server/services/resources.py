"""Turning a client's resource into a stored version: parse, validate, stamp id and meta."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from fhir_server.errors import BadRequest
from fhir_server.search.membership import compartment_membership
from fhir_server.services.context import Context
from fhir_server.storage.repository import NewVersion

ID_PATTERN = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def parse_json(body: bytes) -> Any:
    """The request body as JSON, or 400 naming where the syntax broke."""
    if not body.strip():
        raise BadRequest("the request body is empty", code="invalid")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}", code="structure") from None


def check_id(id: str) -> None:
    if not ID_PATTERN.fullmatch(id):
        raise BadRequest(f"`{id}` is not a valid resource id", code="value")


def format_instant(moment: datetime) -> str:
    """A FHIR instant with microseconds and an explicit UTC offset."""
    return moment.isoformat(timespec="microseconds")


def new_version(
    ctx: Context,
    resource: dict[str, Any],
    *,
    id: str,
    version_id: int,
    last_updated: datetime,
    method: str,
) -> NewVersion:
    """Stamp a validated resource and compute what is stored with it."""
    resource_type = resource["resourceType"]
    rest = {k: v for k, v in resource.items() if k not in {"resourceType", "id", "meta"}}
    meta = resource.get("meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = format_instant(last_updated)
    stamped = {"resourceType": resource_type, "id": id, "meta": meta, **rest}
    return NewVersion(
        resource_type=resource_type,
        id=id,
        version_id=version_id,
        last_updated=last_updated,
        content=orjson.dumps(stamped).decode(),
        compartments=compartment_membership(stamped, local_bases=ctx.local_bases),
        method=method,
        created_by=ctx.actor,
    )


def deletion(
    ctx: Context,
    resource_type: str,
    id: str,
    *,
    version_id: int,
    last_updated: datetime,
    compartments: Sequence[str],
) -> NewVersion:
    """A deletion version; it keeps the compartments of the version it deletes, so that whoever
    could see the resource can see that it was deleted."""
    return NewVersion(
        resource_type=resource_type,
        id=id,
        version_id=version_id,
        last_updated=last_updated,
        content=None,
        compartments=compartments,
        method="DELETE",
        created_by=ctx.actor,
    )


def validated(ctx: Context, body: Any, *, resource_type: str) -> dict[str, Any]:
    """The body as a valid resource of `resource_type`, or 400 with every problem found."""
    if isinstance(body, dict):
        declared = body.get("resourceType")
        if isinstance(declared, str) and declared != resource_type:
            raise BadRequest(
                f"the body's resourceType `{declared}` does not match `{resource_type}` in the URL",
                expression=["resourceType"],
            )
    ctx.validator.validate(body, expected_type=resource_type)
    assert isinstance(body, dict)
    return body
