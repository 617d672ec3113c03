"""The relationship service API (`/api/v1/relationships/...`): JSON in and out, errors as
`{"code", "message"}` with the specification's statuses (docs/relationships.md), rendered by
`api.errors` (`Surface.RELATIONSHIP_API`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response

from fhir_server.api.deps import body_media_type, interaction, json_body
from fhir_server.api.errors import Surface, answered
from fhir_server.api.responses import json_response
from fhir_server.services.workflows import relationships

JSON = frozenset({"application/json"})


async def _json(request: Request) -> Any:
    body_media_type(request, JSON, "`application/json`")
    return await json_body(request)


@answered(Surface.RELATIONSHIP_API)
async def verify(request: Request) -> Response:
    fhir = interaction(request)
    body = await _json(request)
    async with fhir.db.connection() as conn, fhir.authorized(conn) as ctx:
        answer = await relationships.verify(ctx, conn, body)
    return json_response(answer)


@answered(Surface.RELATIONSHIP_API)
async def delegate(request: Request) -> Response:
    fhir = interaction(request)
    body = await _json(request)
    async with fhir.db.transaction() as conn, fhir.authorized(conn) as ctx:
        answer = await relationships.delegate(ctx, conn, body)
    return json_response(answer, 201)


@answered(Surface.RELATIONSHIP_API)
async def approve(request: Request) -> Response:
    fhir = interaction(request)
    async with fhir.db.transaction() as conn, fhir.authorized(conn) as ctx:
        answer = await relationships.approve(ctx, conn, request.path_params["id"])
    return json_response(answer)


def install(app: FastAPI) -> None:
    app.add_api_route("/api/v1/relationships/verify", verify, methods=["POST"])
    app.add_api_route("/api/v1/relationships/delegate", delegate, methods=["POST"])
    app.add_api_route("/api/v1/relationships/delegate/{id}/approve", approve, methods=["POST"])
