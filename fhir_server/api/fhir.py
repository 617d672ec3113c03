"""The FHIR REST API under /fhir. Handlers translate HTTP to a service call and back, nothing more."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Request, Response

from capability.statement import capability_statement
from fhir_server.api.deps import FhirInteraction, PatchBody, ResourceBody
from fhir_server.api.responses import fhir_response, read_response, write_response
from fhir_server.services import bundle, create, delete, history, patch, read, update
from fhir_server.services.outcome_json import information
from fhir_server.services.update import parse_if_match

router = APIRouter(prefix="/fhir")

IfMatch = Annotated[str | None, Header(alias="If-Match")]
IfNoneExist = Annotated[str | None, Header(alias="If-None-Exist")]


@router.get("/metadata")
async def metadata(fhir: FhirInteraction) -> Response:
    statement = capability_statement(
        base_url=fhir.ctx.base_url,
        update_create=fhir.ctx.settings.update_create,
        date=datetime.now(UTC).date().isoformat(),
    )
    return fhir_response(orjson.dumps(statement))


@router.post("")
@router.post("/")
async def batch_or_transaction(fhir: FhirInteraction, body: ResourceBody) -> Response:
    async with fhir.db.transaction() as conn:
        result = await bundle.process(fhir.ctx, conn, body, prefer=fhir.prefer)
    return fhir_response(result)


@router.get("/_history")
async def system_history(fhir: FhirInteraction, request: Request) -> Response:
    async with fhir.db.transaction() as conn:
        return fhir_response(await history.history(fhir.ctx, conn, request.query_params))


@router.get("/{type}/_history")
async def type_history(fhir: FhirInteraction, type: str, request: Request) -> Response:
    async with fhir.db.transaction() as conn:
        body = await history.history(fhir.ctx, conn, request.query_params, resource_type=type)
    return fhir_response(body)


@router.post("/{type}")
async def create_resource(
    fhir: FhirInteraction,
    type: str,
    body: ResourceBody,
    if_none_exist: IfNoneExist = None,
) -> Response:
    async with fhir.db.transaction() as conn:
        result = await create.create(fhir.ctx, conn, type, body, if_none_exist=if_none_exist)
    return write_response(fhir.ctx.base_url, result, fhir.prefer)


@router.get("/{type}/{id}")
async def read_resource(fhir: FhirInteraction, type: str, id: str) -> Response:
    async with fhir.db.connection() as conn:
        found = await read.read(conn, type, id)
    return read_response(found)


@router.put("/{type}/{id}")
async def update_resource(
    fhir: FhirInteraction,
    type: str,
    id: str,
    body: ResourceBody,
    if_match: IfMatch = None,
) -> Response:
    async with fhir.db.transaction() as conn:
        result = await update.update(
            fhir.ctx, conn, type, id, body, if_match=parse_if_match(if_match)
        )
    return write_response(fhir.ctx.base_url, result, fhir.prefer)


@router.patch("/{type}/{id}")
async def patch_resource(
    fhir: FhirInteraction,
    type: str,
    id: str,
    body: PatchBody,
    if_match: IfMatch = None,
) -> Response:
    async with fhir.db.transaction() as conn:
        result = await patch.patch(
            fhir.ctx, conn, type, id, body, if_match=parse_if_match(if_match)
        )
    return write_response(fhir.ctx.base_url, result, fhir.prefer)


@router.delete("/{type}/{id}")
async def delete_resource(fhir: FhirInteraction, type: str, id: str) -> Response:
    async with fhir.db.transaction() as conn:
        version = await delete.delete(fhir.ctx, conn, type, id)
    headers = {"ETag": f'W/"{version}"'} if version is not None else {}
    if fhir.prefer == "OperationOutcome":
        return fhir_response(information(f"`{type}/{id}` deleted"), 200, headers)
    return Response(status_code=204, headers=headers)


@router.get("/{type}/{id}/_history")
async def instance_history(fhir: FhirInteraction, type: str, id: str, request: Request) -> Response:
    async with fhir.db.transaction() as conn:
        body = await history.history(
            fhir.ctx, conn, request.query_params, resource_type=type, id=id
        )
    return fhir_response(body)


@router.get("/{type}/{id}/_history/{vid}")
async def vread_resource(fhir: FhirInteraction, type: str, id: str, vid: str) -> Response:
    async with fhir.db.connection() as conn:
        found = await read.vread(conn, type, id, vid)
    return read_response(found)
