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

Each answer takes the shape of the surface the path belongs to (`api.errors`): under `/api/`
(the Patient and relationship APIs) those APIs' own `{"code", "message"}` with their codes
(openapi.yaml); under `/graphql`, plain text as strawberry answers; elsewhere an OperationOutcome.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import psycopg
import psycopg.errors
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_server.api.errors import internal, rendered, send_answer, surface_of
from fhir_server.errors import BadRequest, FhirError, PayloadTooLarge

log = logging.getLogger("fhir_server.api.errors")

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
            await _answer(send, scope, refusal)
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
                await _answer(send, scope, exc)
        except Exception as exc:
            refusal = _classify(exc)
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            if refusal is None:
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
                await _answer(send, scope, refusal)

    def _refusal(self, scope: Scope) -> FhirError | None:
        query: bytes = scope["query_string"]
        if b"%00" in query:
            return _bad_query("value", "NUL characters (`%00`) are not allowed in a query")
        if query.count(b"&") >= self.max_parameters:
            count = len([p for p in query.split(b"&") if p])
            if count > self.max_parameters:
                return _bad_query(
                    "too-costly",
                    f"the query has {count} parameters; at most {self.max_parameters} are accepted",
                )
        if scope["method"] in _BODILESS:
            return None
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_body_bytes:
                    return PayloadTooLarge(
                        f"the body is {value.decode()} bytes; at most "
                        f"{self.max_body_bytes} are accepted"
                    )
                break
        return None


def _bad_query(code: str, message: str) -> BadRequest:
    return BadRequest(message, code=code, error_code="invalid_query")


def _classify(exc: BaseException) -> BadRequest | None:
    """What the client is told about an exception no handler answered, never its text: the
    request's own fault, or None (an internal error)."""
    for cause in _chain(exc):
        if isinstance(cause, RecursionError):
            return BadRequest("the request nests too deeply to be processed", code="too-costly")
        if isinstance(cause, psycopg.DataError | psycopg.errors.ProgramLimitExceeded):
            return BadRequest("a value in the request cannot be stored or searched", code="value")
        if isinstance(cause, OverflowError):
            return BadRequest("a number or date in the request is out of range", code="value")
        if isinstance(cause, UnicodeError):
            return BadRequest("the request holds text that is not valid Unicode", code="value")
    return None


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


async def _answer(send: Send, scope: Scope, refusal: FhirError | None) -> None:
    """`refusal` in the shape of the path's surface; None: an internal error."""
    surface = surface_of(scope["path"])
    if refusal is None:
        status, media, body = internal(surface, "internal server error")
    else:
        status, media, body, _ = rendered(surface, refusal)
    await send_answer(send, status, media, body)
