"""The relationship service API (`/api/v1/relationships/...`): JSON in and out, errors as
`{"code", "message"}` with the specification's statuses (docs/relationships.md)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, Response
from starlette.requests import ClientDisconnect

from fhir_server.api.deps import body_media_type, interaction, json_body
from fhir_server.api.responses import json_response
from fhir_server.errors import FhirError, Unauthorized
from fhir_server.services.workflows import relationships
from fhir_server.services.workflows.relationships import RelationshipError

log = logging.getLogger(__name__)
JSON = frozenset({"application/json"})


def _error(status: int, code: str, message: str) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="fhir"'} if status == 401 else None
    return json_response({"code": code, "message": message}, status, headers)


async def _run(request: Request, transaction: bool, action: str) -> Response:
    try:
        fhir = interaction(request)
        body = None
        if action != "approve":
            body_media_type(request, JSON, "`application/json`")
            body = await json_body(request)
        unit = fhir.db.transaction() if transaction else fhir.db.connection()
        async with unit as conn, fhir.authorized(conn) as ctx:
            if action == "verify":
                answer = await relationships.verify(ctx, conn, body)
            elif action == "delegate":
                answer = await relationships.delegate(ctx, conn, body)
            else:
                answer = await relationships.approve(ctx, conn, request.path_params["id"])
        return json_response(answer, 201 if action == "delegate" else 200)
    except RelationshipError as exc:
        return _error(exc.status, exc.code, exc.message)
    except Unauthorized as exc:
        return _error(401, "unauthorized", str(exc))
    except FhirError as exc:
        code = {
            400: "invalid_request",
            403: "not_authorized",
            404: "not_found",
            415: "unsupported_media_type",
        }
        return _error(exc.status, code.get(exc.status, "error"), str(exc))
    except ClientDisconnect:
        raise  # nobody to answer: logged quietly by the last-resort middleware
    except Exception:
        log.exception("relationship service failure")
        return _error(500, "relationship_service_failure", "relationship service failure")


async def verify(request: Request) -> Response:
    return await _run(request, False, "verify")


async def delegate(request: Request) -> Response:
    return await _run(request, True, "delegate")


async def approve(request: Request) -> Response:
    return await _run(request, True, "approve")


def install(app: FastAPI) -> None:
    app.add_api_route("/api/v1/relationships/verify", verify, methods=["POST"])
    app.add_api_route("/api/v1/relationships/delegate", delegate, methods=["POST"])
    app.add_api_route("/api/v1/relationships/delegate/{id}/approve", approve, methods=["POST"])
