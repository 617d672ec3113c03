"""`/api/v1/patients`: the Phase 1 Patient Service API (docs/patient-api.md). JSON in and out,
`ETag`/`If-Match` on the version, errors as `{code, message, details}`. Callers authenticate with
`x-api-key` (`PATIENT_API_KEYS`) or a bearer token with `patient:read` / `patient:write` (or a
SMART `system/Patient` scope); every change is audited like any FHIR write."""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.requests import ClientDisconnect

from compartments.engine import Decision
from compartments.ids import is_id
from compartments.policy import Reason
from fhir_server.api.deps import (
    base_url,
    body_media_type,
    client_json,
    json_body,
    read_body,
    runtime,
)
from fhir_server.api.responses import json_response
from fhir_server.auth.scopes import granted
from fhir_server.auth.tokens import bearer
from fhir_server.errors import FhirError, Unauthorized
from fhir_server.services.access.guard import Guard
from fhir_server.services.context import Context, server_guard
from fhir_server.services.formats.etags import etag, version_of
from fhir_server.services.interactions.versions import json_bytes
from fhir_server.services.workflows import patient_service as service
from fhir_server.services.workflows.patient_service import PatientApiError
from fhir_server.storage import idempotency

log = logging.getLogger(__name__)
JSON = frozenset({"application/json"})


def _error(exc: PatientApiError) -> Response:
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.details:
        body["details"] = exc.details
    headers = {"WWW-Authenticate": 'Bearer realm="fhir"'} if exc.status == 401 else None
    return json_response(body, exc.status, headers)


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
        raise PatientApiError(401, "unauthorized", "the API key is not known")
    try:
        principal = rt.verifier.verify(bearer(request.headers.get("authorization")))
    except Unauthorized as exc:
        raise PatientApiError(401, "unauthorized", str(exc)) from None
    needed = "patient:write" if write else "patient:read"
    raw = principal.claims.get("scope", "")
    words = raw.split() if isinstance(raw, str) else list(raw)
    smart = granted(principal.scopes, "Patient", "u" if write else "r")
    if needed not in words and not any(s.context == "system" for s in smart):
        raise PatientApiError(403, "forbidden", f"the token needs the `{needed}` scope")
    user = principal.fhir_user
    if user is not None and user.split("/", 1)[0] in PERSONS:
        raise PersonRefused(user)
    return f"System/patient-api:{principal.subject}"


class PersonRefused(Exception):
    """A person's token at the service API: refused, and audited in the person's name."""

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


def _etag(version: int) -> dict[str, str]:
    return {"ETag": etag(version)}


def _if_match(request: Request) -> int:
    value = request.headers.get("if-match")
    if value is None:
        raise PatientApiError(
            428, "precondition_required", "send `If-Match` with the ETag you read"
        )
    version = version_of(value)
    if version is None:
        raise PatientApiError(412, "version_mismatch", f"`If-Match: {value}` is not a version")
    return version


async def _handle(request: Request, action: str, write: bool) -> Response:
    rt = runtime(request)
    guard: Guard | None = None
    try:
        account = _caller(request, write)
        ctx = _context(request, account)
        guard = ctx.guard
        id = request.path_params.get("patient_id", "")
        if action == "restore":
            tail = request.path_params["tail"]
            if not tail.endswith(":restore"):
                raise PatientApiError(404, "not_found", "no such operation")
            id = tail.removesuffix(":restore")
        if action not in ("create", "list") and not is_id(id):
            raise PatientApiError(404, "not_found", "no patient with this id")
        if action == "create":
            body_media_type(request, JSON, "`application/json`")
            raw = await read_body(request)
            body = await client_json(request, raw)
            key = request.headers.get("idempotency-key")
            if key is not None and len(key) > idempotency.MAX_KEY_LENGTH:
                raise PatientApiError(
                    400,
                    "invalid_idempotency_key",
                    f"`Idempotency-Key` has at most {idempotency.MAX_KEY_LENGTH} characters",
                )
            scope = f"{account} POST /api/v1/patients"
            ttl = timedelta(seconds=rt.settings.idempotency_ttl_seconds)
            async with rt.db.transaction() as conn:
                if key:
                    replay = await idempotency.claim(conn, scope, key, raw, ctx.clock(), ttl)
                    if replay is not None:
                        return Response(replay.body, replay.status, replay.headers)
                found = await service.create(ctx, conn, body)
                payload = json_bytes(service.from_fhir(found))
                headers = {**_etag(found.version_id), "Content-Type": "application/json"}
                if key:
                    await idempotency.store(conn, scope, key, 201, headers, payload)
            _audit(guard, "create", found.id)
            return Response(payload, 201, headers)
        if action == "read":
            async with rt.db.connection() as conn:
                found = await service.read(conn, id)
            _audit(guard, "read", id)
            return json_response(service.from_fhir(found), 200, _etag(found.version_id))
        if action == "replace":
            version = _if_match(request)
            body_media_type(request, JSON, "`application/json`")
            body = await json_body(request)
            async with rt.db.transaction() as conn:
                found = await service.replace(ctx, conn, id, body, version)
            _audit(guard, "update", id)
            return json_response(service.from_fhir(found), 200, _etag(found.version_id))
        if action == "delete":
            async with rt.db.transaction() as conn:
                await service.delete(ctx, conn, id)
            _audit(guard, "delete", id)
            return Response(status_code=204)
        if action == "restore":
            async with rt.db.transaction() as conn:
                found = await service.restore(ctx, conn, id)
            _audit(guard, "restore", id)
            return json_response(service.from_fhir(found), 200, _etag(found.version_id))
        if action == "audit":
            async with rt.db.connection() as conn:
                answer = await service.changes(conn, id, dict(request.query_params))
            guard.record_workflow(
                "search", None, "Patient Service API: audit trail", [f"Patient/{id}"]
            )
            return json_response(answer)
        async with rt.db.connection() as conn:
            answer = await service.list_patients(ctx, conn, dict(request.query_params))
        _audit(guard, "search", None)
        return json_response(answer)
    except PersonRefused as exc:
        guard = server_guard(exc.user)
        id = request.path_params.get("patient_id")
        guard.record(
            _OPERATIONS.get(action, action),
            "Patient",
            f"Patient/{id}" if id else None,
            Decision(
                allowed=False,
                reason=Reason.INVALID_ROLE,
                explanation="the Patient Service API is for services, not a person's token",
            ),
        )
        return _error(
            PatientApiError(
                403,
                "forbidden",
                "the Patient Service API is for services; a person's token uses `/fhir/Patient`",
            )
        )
    except PatientApiError as exc:
        return _error(exc)
    except idempotency.KeyConflict:
        return _error(
            PatientApiError(409, "idempotency_key_reused", "the key was used with another body")
        )
    except FhirError as exc:
        code = {
            400: "invalid_body",
            404: "not_found",
            413: "too_large",
            415: "unsupported_media_type",
        }.get(exc.status, "error")
        return _error(PatientApiError(exc.status, code, str(exc)))
    except ClientDisconnect:
        raise  # nobody to answer: logged quietly by the last-resort middleware
    except Exception:
        log.exception("patient service failure on %s", action)
        return _error(PatientApiError(500, "internal_error", "internal error"))
    finally:
        if guard is not None:
            await rt.audit.record(guard)


# The FHIR operation each action is audited as.
_OPERATIONS = {"list": "search", "replace": "update", "restore": "update", "audit": "search"}


def _audit(guard: Guard, operation: str, id: str | None) -> None:
    resource = f"Patient/{id}" if id else None
    guard.record_workflow(
        operation, resource, f"Patient Service API: {operation}", [resource] if resource else []
    )


async def create(request: Request) -> Response:
    return await _handle(request, "create", True)


async def listing(request: Request) -> Response:
    return await _handle(request, "list", False)


async def read(request: Request) -> Response:
    return await _handle(request, "read", False)


async def replace(request: Request) -> Response:
    return await _handle(request, "replace", True)


async def delete(request: Request) -> Response:
    return await _handle(request, "delete", True)


async def restore(request: Request) -> Response:
    return await _handle(request, "restore", True)


async def audit_trail(request: Request) -> Response:
    return await _handle(request, "audit", False)


def install(app: FastAPI) -> None:
    add = app.add_api_route
    add("/api/v1/patients", create, methods=["POST"])
    add("/api/v1/patients", listing, methods=["GET"])
    add("/api/v1/patients/{tail}", restore, methods=["POST"])
    add("/api/v1/patients/{patient_id}", read, methods=["GET"])
    add("/api/v1/patients/{patient_id}/audit", audit_trail, methods=["GET"])
    add("/api/v1/patients/{patient_id}", replace, methods=["PUT"])
    add("/api/v1/patients/{patient_id}", delete, methods=["DELETE"])
