"""The innermost middleware: what no handler answered is answered here, and hostile requests are
stopped before any route sees them (docs/limits.md).

- The request body is held to `FHIR_MAX_BODY_BYTES` on every route (the FHIR API checks it while
  reading too; this also covers GraphQL and anything else that reads a body): a larger declared
  `Content-Length` gets 413 at once, a longer chunked body 413 once it passes the limit.
- A NUL character in the query string (`%00`) gets 400: no search value or parameter of this
  server may hold one, and PostgreSQL text cannot. (A path segment with one names no resource:
  the routes answer 404, or 400 where an id is being given.)
- A query string of more than `FHIR_MAX_SEARCH_PARAMETERS` parameters gets 400 before it is
  parsed.
- An exception that escaped every handler becomes an OperationOutcome without internals: 400
  where the request itself was beyond what the server or its database can take (nesting that
  exhausts the stack, a value the database refuses as data, a number or date out of range), 500
  otherwise, logged with its type, the route template and the innermost frames of its traceback
  (never its message, which may hold a value of the request). The connection stays open (an
  exception that reached the server would make it drop the connection).
- A client that went away mid-request is logged at INFO, not as an error.

Under `/api/` (the Patient and relationship APIs) the answers take those APIs' own error format,
`{"code", "message"}`, with their codes (openapi.yaml); under `/graphql`, plain text as
strawberry answers.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import orjson
import psycopg
import psycopg.errors
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_server.errors import Issue, PayloadTooLarge
from fhir_server.services.formats.operation_outcome import operation_outcome_bytes

log = logging.getLogger("fhir_server.api.errors")

_FHIR_JSON = b"application/fhir+json; charset=utf-8"
# Requests that carry no body here: their receive needs no counting.
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS"})


class LastResort:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_parameters: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_parameters = max_parameters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            status, issues = refusal
            await _answer(send, scope, status, issues, url=status == 400)
            return
        if scope["method"] in _BODILESS:
            await self._guarded(scope, receive, send)
            return
        limit = self.max_body_bytes
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"the body exceeds {limit} bytes")
            return message

        await self._guarded(scope, counted, send)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except ClientDisconnect:
            log.info("the client disconnected before its request was read")
        except PayloadTooLarge as exc:
            if not started:
                await _answer(send, scope, 413, list(exc.issues))
        except Exception as exc:
            status, issue = _classify(exc)
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            if status == 500:
                # the type and where, never the message: it may hold a value of the request
                log.error(
                    "unhandled error on %s %s: %s at %s",
                    scope["method"],
                    route,
                    type(exc).__name__,
                    _frames(exc),
                )
            else:
                log.info("refused on %s %s: %s", scope["method"], route, type(exc).__name__)
            if not started:
                await _answer(send, scope, status, [issue])

    def _refusal(self, scope: Scope) -> tuple[int, list[Issue]] | None:
        query: bytes = scope["query_string"]
        if b"%00" in query:
            return 400, [Issue("value", "NUL characters (`%00`) are not allowed in a query")]
        if query.count(b"&") >= self.max_parameters:
            count = len([p for p in query.split(b"&") if p])
            if count > self.max_parameters:
                return 400, [
                    Issue(
                        "too-costly",
                        f"the query has {count} parameters; at most {self.max_parameters} "
                        "are accepted",
                    )
                ]
        if scope["method"] in _BODILESS:
            return None
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_body_bytes:
                    return 413, [
                        Issue(
                            "too-costly",
                            f"the body is {value.decode()} bytes; at most "
                            f"{self.max_body_bytes} are accepted",
                        )
                    ]
                break
        return None


def _classify(exc: BaseException) -> tuple[int, Issue]:
    """What the client is told about an exception no handler answered: never its text."""
    for cause in _chain(exc):
        if isinstance(cause, RecursionError):
            return 400, Issue("too-costly", "the request nests too deeply to be processed")
        if isinstance(cause, psycopg.DataError | psycopg.errors.ProgramLimitExceeded):
            return 400, Issue("value", "a value in the request cannot be stored or searched")
        if isinstance(cause, OverflowError):
            return 400, Issue("value", "a number or date in the request is out of range")
        if isinstance(cause, UnicodeError):
            return 400, Issue("value", "the request holds text that is not valid Unicode")
    return 500, Issue("exception", "internal server error")


def _frames(exc: BaseException, count: int = 8) -> str:
    """The innermost frames of `exc`'s traceback, as `file:line function`, innermost last."""
    frames = traceback.extract_tb(exc.__traceback__)[-count:]
    return " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


# The JSON APIs answer errors in their own format and codes (openapi.yaml): a refusal of the
# URL (400 before any route) is the Patient Service's `invalid_query`, of the body `invalid_body`.
_PATIENT_CODES = {413: "too_large", 500: "internal_error"}
_RELATIONSHIP_CODES = {400: "invalid_request", 500: "relationship_service_failure"}


def _api_code(path: str, status: int, url: bool) -> str:
    if path.startswith("/api/v1/patients"):
        if status == 400:
            return "invalid_query" if url else "invalid_body"
        return _PATIENT_CODES.get(status, "error")
    return _RELATIONSHIP_CODES.get(status, "error")


async def _answer(
    send: Send, scope: Scope, status: int, issues: list[Issue], *, url: bool = False
) -> None:
    path: str = scope["path"]
    if path.startswith("/api/"):
        code = _api_code(path, status, url)
        body = orjson.dumps({"code": code, "message": issues[0].diagnostics})
        media = b"application/json"
    elif path.startswith("/graphql"):  # strawberry's own errors are plain text
        body, media = issues[0].diagnostics.encode(), b"text/plain; charset=utf-8"
    else:
        body, media = operation_outcome_bytes(issues), _FHIR_JSON
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", media), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
