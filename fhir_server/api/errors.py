"""Every error becomes an OperationOutcome here, and only here."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from psycopg.errors import ConfigurationLimitExceeded, QueryCanceled
from starlette.exceptions import HTTPException as StarletteHTTPException

from fhir_server.api.responses import outcome_response
from fhir_server.errors import AccessDenied, FhirError, Issue, Unauthorized

log = logging.getLogger(__name__)

_HTTP_CODES = {404: "not-found", 405: "not-supported", 413: "too-costly", 415: "not-supported"}


async def fhir_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FhirError)
    headers = None
    if isinstance(exc, Unauthorized):
        # RFC 6750 section 3: what the client must do is in the challenge
        description = exc.issues[0].diagnostics.replace('"', "'") if exc.issues else ""
        headers = {
            "WWW-Authenticate": f'Bearer realm="fhir", error="invalid_token", '
            f'error_description="{description}"'
        }
    elif isinstance(exc, AccessDenied) and exc.reason == "insufficient_scope":
        headers = {"WWW-Authenticate": 'Bearer realm="fhir", error="insufficient_scope"'}
    return outcome_response(exc.status, list(exc.issues), headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = f"no FHIR endpoint at `{request.url.path}`"
    elif exc.status_code == 405:
        message = f"`{request.method}` is not supported at `{request.url.path}`"
    else:
        message = str(exc.detail).lower()
    code = _HTTP_CODES.get(exc.status_code, "processing")
    return outcome_response(exc.status_code, [Issue(code, message)], dict(exc.headers or {}))


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
