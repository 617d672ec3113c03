"""Turning a client's resource into a stored version: parse, validate, stamp id and meta."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from compartments.ids import is_id
from fhir_server.errors import BadRequest, Unprocessable
from fhir_server.search.index import index_rows
from fhir_server.search.membership import compartment_membership
from fhir_server.services.context import Context
from fhir_server.services.formats.limits import InputLimits, check_value
from fhir_server.services.interactions import patient_profile
from fhir_server.storage.repository import NewVersion


class DecimalText(float):
    """A JSON number whose text a float would not keep (`1.50`, `1e3`, 20 digits).

    FHIR decimals carry their precision in their text, so the text is what gets stored and
    returned; being a float, the value still validates and compares as a number.
    """

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> DecimalText:
        number = super().__new__(cls, text)
        number.text = text
        return number


# A fraction ending in 0, an exponent, or 16+ digits: numbers that a float would rewrite.
_LOSSY_NUMBER = re.compile(rb"[0-9]\.[0-9]*0(?![0-9])|[0-9][eE]|[0-9]{16,}")


def _big_int(text: str) -> int | DecimalText:
    return DecimalText(text) if len(text) > 15 else int(text)


_TOO_DEEP = "the request body nests too deeply to be read"


def parse_json(body: bytes | str, limits: InputLimits | None = None) -> Any:
    """The request body as JSON, or 400 naming where the syntax broke; with `limits` (a
    client's body), also 400 for a body beyond them (services/formats/limits.py)."""
    raw = body.encode() if isinstance(body, str) else body
    if not raw.strip():
        raise BadRequest("the request body is empty", code="invalid")
    lossy = _LOSSY_NUMBER.search(raw) is not None
    try:
        if lossy:
            parsed = json.loads(raw, parse_float=DecimalText, parse_int=_big_int)
        else:
            parsed = orjson.loads(raw)
    except (orjson.JSONDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        if "depth limit" in str(exc) or "recursion" in str(exc):  # orjson stops at 1024 levels
            raise BadRequest(_TOO_DEEP, code="too-costly") from None
        raise BadRequest(f"the request body is not valid JSON: {exc}", code="structure") from None
    except RecursionError:  # `json` recurses per level, into the interpreter's stack limit
        raise BadRequest(_TOO_DEEP, code="too-costly") from None
    if limits is not None:
        # `json` accepts lone surrogates (`"\\ud800"`, or their bytes) that no encoder can
        # write back; orjson refuses them itself
        check_value(parsed, limits, surrogates=lossy)
    # PostgreSQL's JSON cannot hold a NUL character; `\u0000` is rare enough to look closer
    elif b"\\u0000" in raw and _holds_nul(parsed):
        raise BadRequest("NUL characters are not allowed (`\\u0000` in a string)", code="value")
    return parsed


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def _serialize_default(value: Any) -> Any:
    if isinstance(value, DecimalText):
        return orjson.Fragment(value.text)
    raise TypeError(f"cannot serialize `{type(value).__name__}`")


def json_bytes(value: Any) -> bytes:
    """JSON of a value that may hold a client's numbers (`DecimalText`), keeping their text."""
    return orjson.dumps(value, default=_serialize_default)


def json_size(value: Any) -> int:
    """The length of `value`'s JSON text, in bytes."""
    return len(orjson.dumps(value, default=_serialize_default))


def dump_json(value: Any) -> str:
    """JSON text of a resource, keeping every number's original text."""
    return orjson.dumps(value, default=_serialize_default).decode()


def check_id(id: str) -> None:
    if not is_id(id):
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
        content=dump_json(stamped),
        compartments=compartment_membership(stamped, local_bases=ctx.local_bases),
        method=method,
        created_by=ctx.actor,
        index=index_rows(stamped, local_bases=ctx.local_bases),
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
    if resource_type == "Patient" and ctx.settings.patient_profile == "phase1":
        issues = patient_profile.check(body, ctx.clock().date())
        if issues:
            raise Unprocessable(issues=issues)
    return body
