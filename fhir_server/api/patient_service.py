"""`/api/v1/patients`: the Phase 1 Patient Service API (docs/patient-api.md). JSON in and out,
`ETag`/`If-Match` on the version, errors as `{code, message, details}`. Callers authenticate with
`x-api-key` (`PATIENT_API_KEYS`) or a bearer token with `patient:read` / `patient:write` (or a
SMART `system/Patient` scope); every change is audited like any FHIR write."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from starlette.requests import ClientDisconnect

from compartments.engine import Decision
from compartments.ids import is_id
from compartments.policy import Reason
from fhir_server.api import errors
from fhir_server.api.deps import (
    base_url,
    body_media_type,
    client_json,
    json_body,
    read_body,
    runtime,
)
from fhir_server.api.errors import Endpoint, Surface
from fhir_server.api.idempotency import Idempotent
from fhir_server.api.responses import json_response
from fhir_server.auth.scopes import granted
from fhir_server.auth.tokens import bearer
from fhir_server.errors import (
    Forbidden,
    NotFound,
    PreconditionFailed,
    PreconditionRequired,
    Unauthorized,
)
from fhir_server.services.access.guard import Guard
from fhir_server.services.context import Context, server_guard
from fhir_server.services.formats.etags import etag, version_of
from fhir_server.services.interactions.versions import json_bytes
from fhir_server.services.workflows import patient_service as service

JSON = frozenset({"application/json"})
_SERVICES_ONLY = "the Patient Service API is for services; a person's token uses `/fhir/Patient`"

# A token that names one of these as its user is a person's, not a service's (see `_caller`).
PERSONS = frozenset({"Patient", "RelatedPerson", "Person"})


def _caller(request: Request, write: bool) -> str:
    """Who calls: an API key's name, or the token's subject with the needed scope. The API
    writes as a trusted service (no compartment rules), so a person's token (its `fhirUser` a
    Patient, RelatedPerson or Person) is refused, whatever its scopes: a patient or relative
    changes demographics through `/fhir/Patient`, under the engine (docs/patient-api.md)."""
    rt = runtime(request)
    key = request.headers.get("x-api-key")
    if key is not None:
        digest = hashlib.sha256(key.encode()).hexdigest()
        for name, known in rt.settings.patient_api_keys:
            if hmac.compare_digest(digest, known):
                return f"System/api-key:{name}"
        raise Unauthorized("the API key is not known")
    principal = rt.verifier.verify(bearer(request.headers.get("authorization")))
    needed = "patient:write" if write else "patient:read"
    raw = principal.claims.get("scope", "")
    words = raw.split() if isinstance(raw, str) else list(raw)
    smart = granted(principal.scopes, "Patient", "u" if write else "r")
    if needed not in words and not any(s.context == "system" for s in smart):
        raise Forbidden(f"the token needs the `{needed}` scope")
    user = principal.fhir_user
    if user is not None and user.split("/", 1)[0] in PERSONS:
        raise PersonRefused(user)
    return f"System/patient-api:{principal.subject}"


class PersonRefused(Exception):
    """A person's token at the service API: refused (Forbidden), and audited in the person's
    name (`_route`)."""

    def __init__(self, user: str) -> None:
        super().__init__(user)
        self.user = user


def _context(request: Request, account: str) -> Context:
    rt = runtime(request)
    return Context(
        settings=rt.settings,
        validator=rt.validator,
        base_url=base_url(request, rt),
        clock=rt.clock,
        guard=server_guard(account),
    )


Handler = Callable[[Request, Context], Awaitable[Response]]


def _route(operation: str, *, write: bool) -> Callable[[Handler], Endpoint]:
    """A route of the API: the caller checked (`_caller`), the handler run with the caller's
    context, what it raises answered as `{code, message, details}` (`api.errors`), and the
    caller's decisions handed to the audit trail whatever happened. `operation`: the FHIR
    interaction a refused person's request is audited as."""

    def wrap(handler: Handler) -> Endpoint:
        async def route(request: Request) -> Response:
            rt = runtime(request)
            guard: Guard | None = None
            try:
                try:
                    ctx = _context(request, _caller(request, write))
                except PersonRefused as exc:
                    guard = _refused(exc.user, operation, request.path_params.get("patient_id"))
                    raise Forbidden(_SERVICES_ONLY) from None
                guard = ctx.guard
                return await handler(request, ctx)
            except ClientDisconnect:
                raise  # nobody to answer: logged quietly by the last-resort middleware
            except Exception as exc:
                return errors.response(Surface.PATIENT_API, request, exc)
            finally:
                if guard is not None:
                    await rt.audit.record(guard)

        route.__name__, route.__qualname__ = handler.__name__, handler.__qualname__
        route.__doc__, route.__module__ = handler.__doc__, handler.__module__
        return route

    return wrap


def _refused(user: str, operation: str, id: str | None) -> Guard:
    guard = server_guard(user)
    guard.record(
        operation,
        "Patient",
        f"Patient/{id}" if id else None,
        Decision(
            allowed=False,
            reason=Reason.INVALID_ROLE,
            explanation="the Patient Service API is for services, not a person's token",
        ),
    )
    return guard


def _etag(version: int) -> dict[str, str]:
    return {"ETag": etag(version)}


def _if_match(request: Request) -> int:
    value = request.headers.get("if-match")
    if value is None:
        raise PreconditionRequired("send `If-Match` with the ETag you read")
    version = version_of(value)
    if version is None:
        raise PreconditionFailed(
            f"`If-Match: {value}` is not a version", error_code="version_mismatch"
        )
    return version


def _patient_id(request: Request) -> str:
    id: str = request.path_params["patient_id"]
    if not is_id(id):
        raise NotFound("no patient with this id")
    return id


def _audit(guard: Guard, operation: str, id: str | None) -> None:
    resource = f"Patient/{id}" if id else None
    guard.record_workflow(
        operation, resource, f"Patient Service API: {operation}", [resource] if resource else []
    )


@_route("create", write=True)
async def create(request: Request, ctx: Context) -> Response:
    rt = runtime(request)
    body_media_type(request, JSON, "`application/json`")
    raw = await read_body(request)
    body = await client_json(request, raw)
    key = request.headers.get("idempotency-key")
    async with rt.db.transaction() as conn:
        kept = Idempotent(ctx, conn, "POST /api/v1/patients", key, raw)
        if (replay := await kept.replay()) is not None:
            return replay
        found = await service.create(ctx, conn, body)
        payload = json_bytes(service.from_fhir(found))
        headers = {**_etag(found.version_id), "Content-Type": "application/json"}
        answer = await kept.keep(Response(payload, 201, headers))
    _audit(ctx.guard, "create", found.id)
    return answer


@_route("search", write=False)
async def listing(request: Request, ctx: Context) -> Response:
    async with runtime(request).db.connection() as conn:
        answer = await service.list_patients(ctx, conn, dict(request.query_params))
    _audit(ctx.guard, "search", None)
    return json_response(answer)


@_route("read", write=False)
async def read(request: Request, ctx: Context) -> Response:
    id = _patient_id(request)
    async with runtime(request).db.connection() as conn:
        found = await service.read(conn, id)
    _audit(ctx.guard, "read", id)
    return json_response(service.from_fhir(found), 200, _etag(found.version_id))


@_route("update", write=True)
async def replace(request: Request, ctx: Context) -> Response:
    id = _patient_id(request)
    version = _if_match(request)
    body_media_type(request, JSON, "`application/json`")
    body = await json_body(request)
    async with runtime(request).db.transaction() as conn:
        found = await service.replace(ctx, conn, id, body, version)
    _audit(ctx.guard, "update", id)
    return json_response(service.from_fhir(found), 200, _etag(found.version_id))


@_route("delete", write=True)
async def delete(request: Request, ctx: Context) -> Response:
    id = _patient_id(request)
    async with runtime(request).db.transaction() as conn:
        await service.delete(ctx, conn, id)
    _audit(ctx.guard, "delete", id)
    return Response(status_code=204)


@_route("update", write=True)
async def restore(request: Request, ctx: Context) -> Response:
    """`POST /api/v1/patients/{patient_id}:restore` (the route's one segment is `{tail}`)."""
    tail: str = request.path_params["tail"]
    if not tail.endswith(":restore"):
        raise NotFound("no such operation")
    id = tail.removesuffix(":restore")
    if not is_id(id):
        raise NotFound("no patient with this id")
    async with runtime(request).db.transaction() as conn:
        found = await service.restore(ctx, conn, id)
    _audit(ctx.guard, "restore", id)
    return json_response(service.from_fhir(found), 200, _etag(found.version_id))


@_route("search", write=False)
async def audit_trail(request: Request, ctx: Context) -> Response:
    id = _patient_id(request)
    async with runtime(request).db.connection() as conn:
        answer = await service.changes(conn, id, dict(request.query_params))
    ctx.guard.record_workflow("search", None, "Patient Service API: audit trail", [f"Patient/{id}"])
    return json_response(answer)


def install(app: FastAPI) -> None:
    add = app.add_api_route
    add("/api/v1/patients", create, methods=["POST"])
    add("/api/v1/patients", listing, methods=["GET"])
    add("/api/v1/patients/{tail}", restore, methods=["POST"])
    add("/api/v1/patients/{patient_id}", read, methods=["GET"])
    add("/api/v1/patients/{patient_id}/audit", audit_trail, methods=["GET"])
    add("/api/v1/patients/{patient_id}", replace, methods=["PUT"])
    add("/api/v1/patients/{patient_id}", delete, methods=["DELETE"])
