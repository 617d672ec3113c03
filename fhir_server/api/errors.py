"""Every error becomes an answer here, and only here: the status of each domain error
(`fhir_server.errors`) and its shape on each surface.

| surface | where | shape |
| --- | --- | --- |
| `FHIR` | `/fhir` and whatever no other surface claims | OperationOutcome, the error's issues |
| `PATIENT_API` | `/api/v1/patients` (docs/patient-api.md) | `{code, message, details?}` |
| `RELATIONSHIP_API` | the rest of `/api/` (docs/relationships.md) | `{code, message}` |
| `GRAPHQL` | `/graphql` | a GraphQL error with `extensions.code`, the error's stable code |

OAuth's `{error, error_description}` (the authorization server, next) is one more surface: a member
of `Surface`, a code table like `PATIENT_CODES`, and a branch in `rendered`.

A route never maps errors itself: it raises domain errors, and the JSON APIs' routes are wrapped
by `answered` (or call `response`) so that what they raise is answered in their surface's shape.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from graphql import GraphQLError
from psycopg.errors import ConfigurationLimitExceeded, QueryCanceled
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Send

from fhir_server.api.methods import allowed
from fhir_server.api.responses import outcome_response
from fhir_server.errors import (
    AccessDenied,
    BadGateway,
    BadRequest,
    Conflict,
    FhirError,
    Forbidden,
    GatewayTimeout,
    Gone,
    InvalidFields,
    Issue,
    MethodNotAllowed,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    PreconditionRequired,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    Unprocessable,
    UnsupportedMediaType,
)
from fhir_server.services.formats.operation_outcome import operation_outcome_bytes

log = logging.getLogger(__name__)


class Surface(enum.Enum):
    FHIR = "fhir"
    PATIENT_API = "patient_api"
    RELATIONSHIP_API = "relationship_api"
    GRAPHQL = "graphql"


def surface_of(path: str) -> Surface:
    if path.startswith("/api/v1/patients"):
        return Surface.PATIENT_API
    if path.startswith("/api/"):
        return Surface.RELATIONSHIP_API
    if path.startswith("/graphql"):
        return Surface.GRAPHQL
    return Surface.FHIR


# The HTTP status of each class of domain error (the nearest class in its MRO), on every surface.
STATUS: dict[type[FhirError], int] = {
    FhirError: 500,
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    MethodNotAllowed: 405,
    NotAcceptable: 406,
    Conflict: 409,
    Gone: 410,
    PreconditionFailed: 412,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    Unprocessable: 422,
    PreconditionRequired: 428,
    TooManyRequests: 429,
    BadGateway: 502,
    Unavailable: 503,
    GatewayTimeout: 504,
}


def status_of(exc: FhirError) -> int:
    """The HTTP status of a domain error (also a Bundle entry's `response.status`)."""
    for cls in type(exc).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return 500


# The Patient Service API's code for each stable code (its specification's, docs/patient-api.md).
PATIENT_CODES: dict[str, str] = {
    "error": "error",
    "bad_request": "invalid_body",
    "invalid_query": "invalid_query",
    "invalid_idempotency_key": "invalid_idempotency_key",
    "invalid_resource": "invalid_body",
    "validation_error": "validation_error",
    "unauthorized": "unauthorized",
    "forbidden": "forbidden",
    "access_denied": "forbidden",
    "not_found": "not_found",
    "not_supported": "not_found",
    "method_not_allowed": "error",
    "not_acceptable": "error",
    "conflict": "error",
    "duplicate_email": "duplicate_email",
    "duplicate_phone": "duplicate_phone",
    "not_deleted": "not_deleted",
    "idempotency_key_reused": "idempotency_key_reused",
    "gone": "error",
    "precondition_failed": "error",
    "version_mismatch": "version_mismatch",
    "precondition_required": "precondition_required",
    "payload_too_large": "too_large",
    "unsupported_media_type": "unsupported_media_type",
    "unprocessable": "error",
    "too_many_requests": "error",
    "bad_gateway": "error",
    "gateway_timeout": "error",
    "unavailable": "error",
    "audit_unavailable": "error",
}
# Where the Patient Service API words an error its own way.
PATIENT_MESSAGES: dict[str, str] = {
    "idempotency_key_reused": "the key was used with another body",
}

# The relationship API's code for each stable code (its specification's, docs/relationships.md).
RELATIONSHIP_CODES: dict[str, str] = {
    **dict.fromkeys(PATIENT_CODES, "error"),
    **dict.fromkeys(
        (
            "bad_request",
            "invalid_query",
            "invalid_idempotency_key",
            "invalid_resource",
            "validation_error",
        ),
        "invalid_request",
    ),
    "unauthorized": "unauthorized",
    "forbidden": "not_authorized",
    "access_denied": "not_authorized",
    "not_found": "not_found",
    "not_supported": "not_found",
    "unsupported_media_type": "unsupported_media_type",
}

# What each surface answers to an exception that is no domain error: (code, message).
INTERNAL: dict[Surface, tuple[str, str]] = {
    Surface.FHIR: ("exception", "internal server error"),
    Surface.PATIENT_API: ("internal_error", "internal error"),
    Surface.RELATIONSHIP_API: ("relationship_service_failure", "relationship service failure"),
    Surface.GRAPHQL: ("internal_error", "internal server error"),
}

_JSON = "application/json"
_FHIR_JSON = "application/fhir+json; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"
# RFC 6750 section 3 on the JSON APIs: the scheme, and where
_JSON_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="fhir"'}


def rendered(surface: Surface, exc: FhirError) -> tuple[int, str, bytes, dict[str, str]]:
    """A domain error on a surface: (status, media type, body, headers)."""
    status = status_of(exc)
    if surface is Surface.FHIR:
        return status, _FHIR_JSON, operation_outcome_bytes(exc.issues), _fhir_headers(exc)
    if surface is Surface.GRAPHQL:  # a transport-level refusal: plain text, as strawberry's
        return status, _TEXT, str(exc).encode(), {}
    headers = dict(_JSON_CHALLENGE) if isinstance(exc, Unauthorized) else {}
    if surface is Surface.PATIENT_API:
        body: dict[str, Any] = {
            "code": PATIENT_CODES[exc.error_code],
            "message": PATIENT_MESSAGES.get(exc.error_code, str(exc)),
        }
        if isinstance(exc, InvalidFields) and exc.details:
            body["details"] = exc.details
    else:
        body = {"code": RELATIONSHIP_CODES[exc.error_code], "message": str(exc)}
    return status, _JSON, orjson.dumps(body), headers


def internal(surface: Surface, message: str | None = None) -> tuple[int, str, bytes]:
    """What a surface answers to a failure that is not the caller's: (status, media, body);
    never internals. `message`: the surface's own unless given."""
    code, said = INTERNAL[surface]
    said = message or said
    if surface is Surface.FHIR:
        return 500, _FHIR_JSON, operation_outcome_bytes([Issue(code, said)])
    if surface is Surface.GRAPHQL:
        return 500, _TEXT, said.encode()
    return 500, _JSON, orjson.dumps({"code": code, "message": said})


async def send_answer(
    send: Send, status: int, media: str, body: bytes, headers: dict[str, str] | None = None
) -> None:
    """Answer from an ASGI middleware, before or instead of the application: a whole response
    of `body` (a rendered error) in two messages."""
    raw = [
        (b"content-type", media.encode()),
        (b"content-length", str(len(body)).encode()),
        *((name.encode(), value.encode()) for name, value in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _fhir_headers(exc: FhirError) -> dict[str, str]:
    if isinstance(exc, Unauthorized):
        # RFC 6750 section 3: what the client must do is in the challenge
        description = exc.issues[0].diagnostics.replace('"', "'") if exc.issues else ""
        return {
            "WWW-Authenticate": f'Bearer realm="fhir", error="invalid_token", '
            f'error_description="{description}"'
        }
    if isinstance(exc, AccessDenied) and exc.reason == "insufficient_scope":
        return {"WWW-Authenticate": 'Bearer realm="fhir", error="insufficient_scope"'}
    return {}


def response(surface: Surface, request: Request, exc: Exception) -> Response:
    """The answer to what a route of `surface` raised; an unexpected exception is logged with
    its traceback and answered without internals."""
    if isinstance(exc, FhirError):
        status, media, body, headers = rendered(surface, exc)
        return Response(body, status, headers or None, media_type=media)
    log.exception("%s failure on %s %s", surface.value, request.method, request.url.path)
    status, media, body = internal(surface)
    return Response(body, status, media_type=media)


Endpoint = Callable[[Request], Awaitable[Response]]


def answered(surface: Surface) -> Callable[[Endpoint], Endpoint]:
    """A route of a JSON API whose errors are answered in its surface's shape (a client that
    went away is not answered: the last-resort middleware logs it quietly)."""

    def wrap(endpoint: Endpoint) -> Endpoint:
        async def route(request: Request) -> Response:
            try:
                return await endpoint(request)
            except ClientDisconnect:
                raise
            except Exception as exc:
                return response(surface, request, exc)

        route.__name__, route.__qualname__ = endpoint.__name__, endpoint.__qualname__
        route.__doc__, route.__module__ = endpoint.__doc__, endpoint.__module__
        return route

    return wrap


def graphql_error(error: GraphQLError) -> dict[str, Any]:
    """One entry of a GraphQL response's `errors`: a domain error's stable code is its
    `extensions.code`; anything else as strawberry formats it."""
    formatted: dict[str, Any] = dict(error.formatted)
    original = error.original_error
    if isinstance(original, FhirError):
        formatted["extensions"] = {
            **(formatted.get("extensions") or {}),
            "code": original.error_code,
        }
    return formatted


# The application's handlers: what a route did not answer itself, answered as FHIR.


async def fhir_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FhirError)
    headers = _fhir_headers(exc)
    if isinstance(exc, MethodNotAllowed):
        # a route that took the method refused it for this request (`GET Patient/_search`, an
        # update-as-create that is switched off): the path's other methods
        methods = allowed(request.app.router.routes, request.scope, refused=request.method)
        headers["Allow"] = ", ".join(methods)
    return outcome_response(status_of(exc), list(exc.issues), headers or None)


_HTTP_CODES = {404: "not-found", 405: "not-supported", 413: "too-costly", 415: "not-supported"}


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    headers = dict(exc.headers or {})
    if status == 405 and getattr(request.scope.get("route"), "methods", None):
        # A route matched the path but not the method. Starlette's `Allow` names that route's
        # methods only; the path's are those of every route matching it (api/methods.py). None:
        # every route there answers 404 to its path values (`PUT /fhir/foo`).
        methods = allowed(request.app.router.routes, request.scope)
        if methods:
            headers["Allow"] = ", ".join(methods)
        else:
            status = 404
            headers.pop("Allow", None)
    if status == 404:
        message = f"no FHIR endpoint at `{request.url.path}`"
    elif status == 405:
        message = f"`{request.method}` is not supported at `{request.url.path}`"
    else:
        message = str(exc.detail).lower()
    code = _HTTP_CODES.get(status, "processing")
    return outcome_response(status, [Issue(code, message)], headers)


async def request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    issues = [
        Issue(
            "invalid",
            str(error.get("msg", "invalid request")).lower(),
            expression=(".".join(str(p) for p in error.get("loc", ())),),
        )
        for error in exc.errors()
    ]
    return outcome_response(400, issues)


async def database_limit(request: Request, exc: Exception) -> Response:
    # A statement over the session's `statement_timeout` or over `temp_file_limit`
    # (docs/configuration.md#database-limits): the request asked for more than the server gives
    # one request; its transaction is rolled back.
    log.warning(
        "a statement of %s %s reached a database limit: %s",
        request.method,
        request.url.path,
        type(exc).__name__,
    )
    message = "the request needs more of the database than one request may use"
    return outcome_response(503, [Issue("too-costly", message)])


async def server_error(request: Request, exc: Exception) -> Response:
    # The body never carries internals; the log has the exception type and where it happened.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return outcome_response(500, [Issue("exception", "internal server error")])


def install(app: FastAPI) -> None:
    app.add_exception_handler(FhirError, fhir_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, request_error)
    app.add_exception_handler(QueryCanceled, database_limit)
    app.add_exception_handler(ConfigurationLimitExceeded, database_limit)
    app.add_exception_handler(Exception, server_error)
