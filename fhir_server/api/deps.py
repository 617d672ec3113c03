"""Request dependencies, as Annotated aliases. No permission logic lives in route handlers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from capability.definitions import resource_types
from fhir_server.api.runtime import Runtime
from fhir_server.errors import NotAcceptable, NotSupported, PayloadTooLarge, UnsupportedMediaType
from fhir_server.services.context import Context
from fhir_server.services.resources import parse_json

JSON_TYPES = frozenset({"application/fhir+json", "application/json"})
_FORMAT_ALIASES = {"json": "application/fhir+json", "application/json": "application/fhir+json"}
_XML_HINTS = ("xml", "turtle", "ttl")


async def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(runtime)]


async def context(request: Request, rt: RuntimeDep) -> Context:
    base = rt.settings.base_url or f"{str(request.base_url).rstrip('/')}/fhir"
    return Context(settings=rt.settings, validator=rt.validator, base_url=base)


ContextDep = Annotated[Context, Depends(context)]


async def resource_type(type: str) -> str:
    if type not in resource_types():
        raise NotSupported(f"resource type `{type}` is not supported", code="not-supported")
    return type


ResourceTypeDep = Annotated[str, Depends(resource_type)]


async def negotiate(request: Request) -> None:
    """Only JSON is produced: XML or another format asked for gets 406 with a clear message."""
    wanted = request.query_params.get("_format")
    if wanted is not None:
        if _FORMAT_ALIASES.get(wanted, wanted).split(";")[0].strip() not in JSON_TYPES:
            raise NotAcceptable(
                f"`_format={wanted}` is not supported: this server speaks JSON only"
            )
        return
    accept = request.headers.get("accept")
    if not accept:
        return
    offered = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if any(t in JSON_TYPES or t in {"*/*", "application/*"} for t in offered):
        return
    raise NotAcceptable(
        f"`Accept: {accept}` cannot be served: this server speaks JSON only "
        "(`application/fhir+json`)"
    )


async def read_body(request: Request, rt: RuntimeDep) -> bytes:
    """The request body, refusing more than the configured limit before reading it all."""
    limit = rt.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; at most {limit} are accepted")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str | None:
    value = request.headers.get("content-type")
    return value.split(";")[0].strip().lower() if value else None


async def resource_body(request: Request, body: Annotated[bytes, Depends(read_body)]) -> Any:
    """A JSON resource body: `application/fhir+json` or `application/json` (or no type at all)."""
    media = _media_type(request)
    if media is not None and media not in JSON_TYPES:
        if any(hint in media for hint in _XML_HINTS):
            message = f"`Content-Type: {media}` is not supported: send `application/fhir+json`"
        else:
            message = (
                f"`Content-Type: {media}` is not a FHIR JSON type; send `application/fhir+json`"
            )
        raise UnsupportedMediaType(message)
    return parse_json(body)


ResourceBody = Annotated[Any, Depends(resource_body)]


async def patch_body(request: Request, body: Annotated[bytes, Depends(read_body)]) -> Any:
    media = _media_type(request)
    if media != "application/json-patch+json":
        raise UnsupportedMediaType(
            f"`Content-Type: {media}` is not supported for patch: send `application/json-patch+json`"
        )
    return parse_json(body)


PatchBody = Annotated[Any, Depends(patch_body)]


async def prefer_return(request: Request) -> str:
    """`Prefer: return=minimal|representation|OperationOutcome`; representation by default."""
    for part in request.headers.get("prefer", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "return":
            value = value.strip().strip('"')
            if value in {"minimal", "representation", "OperationOutcome"}:
                return value
    return "representation"


PreferReturn = Annotated[str, Depends(prefer_return)]
