"""Request metrics and structured request logs, as one pure ASGI middleware (cheaper per request
than Starlette's BaseHTTPMiddleware).

Per request: Prometheus `http_requests_total{method, route, status}` and
`http_request_duration_seconds{method, route}`, and, at INFO, one log line with the request
id (`X-Request-ID`, made up when absent and returned), the W3C trace id (from `traceparent`, or
the request's own trace when tracing is on), the acting account, the route template, status and
duration; with tracing on (fhir_server/tracing.py), the request's server span. Never a body, a query string or a
concrete path: the route template (`/fhir/{type}/{id}`) carries no PHI. The log's two formats
are here too: JSON lines, and readable lines for a terminal (chosen in fhir_server/cli.py).
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import re
import time
import uuid
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import fhir_server.tracing as tracing
from fhir_server.metrics import REQUEST_DURATION, REQUESTS

log = logging.getLogger("fhir_server.requests")
# The acting account of the current request, set once the token is verified (api/deps.py).
ACTOR: contextvars.ContextVar[str | None] = contextvars.ContextVar("actor", default=None)
# Request ids made here: a random prefix per process and a counter (cheaper than a UUID each).
_PROCESS = uuid.uuid4().hex[:12]
_COUNT = itertools.count(1)
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# The status logged and counted for a request whose client disconnected before it was answered
# (nginx's "client closed request"): nothing was sent, and it is no 5xx of the server's.
CLIENT_CLOSED = 499


class RequestObservation:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = traceparent = tracestate = b""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value
            elif name == b"traceparent":
                traceparent = value
            elif name == b"tracestate":
                tracestate = value
        method = scope["method"]
        span = None
        if tracing.enabled():
            span, span_token = tracing.start_request(method, traceparent, tracestate)
        request_id = given.decode("latin-1") if given else ""
        if not _REQUEST_ID.match(request_id):
            request_id = f"{_PROCESS}-{next(_COUNT):x}"
        echo = (b"x-request-id", request_id.encode())
        status = 500
        answered = gone = False
        token = ACTOR.set(None)

        async def observed(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
                message["headers"] = [*message.get("headers", ()), echo]
            await send(message)

        async def listened() -> Message:
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
            return message

        try:
            await self.app(scope, listened, observed)
        finally:
            elapsed = time.perf_counter() - started
            if gone and not answered:
                status = CLIENT_CLOSED  # the client left before any answer: not a server error
            route = getattr(scope.get("route"), "path", None) or _mounted(scope) or "unmatched"
            _observe(method, route, status, elapsed)
            if span is not None:
                tracing.end_request(span, span_token, method, route, status)
            if log.isEnabledFor(logging.INFO):
                if span is not None:
                    trace_id: str | None = tracing.trace_id(span)
                else:
                    match = _TRACEPARENT.match(traceparent.decode("latin-1"))
                    trace_id = match.group(1) if match else None
                log.info(
                    "request",
                    extra={
                        "request_id": request_id,
                        "trace_id": trace_id,
                        "actor": ACTOR.get(),
                        "method": method,
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )
            ACTOR.reset(token)


# The metric children by their labels: `labels()` costs more than the observation itself.
_COUNTERS: dict[tuple[str, str, int], Any] = {}
_HISTOGRAMS: dict[tuple[str, str], Any] = {}


# Any token is a valid HTTP method: a label per made-up method would grow the metrics (and the
# process) without bound, so the others share one.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _observe(method: str, route: str, status: int, elapsed: float) -> None:
    if method not in _METHODS:
        method = "OTHER"
    counter = _COUNTERS.get((method, route, status))
    if counter is None:
        counter = _COUNTERS[(method, route, status)] = REQUESTS.labels(method, route, str(status))
    counter.inc()
    histogram = _HISTOGRAMS.get((method, route))
    if histogram is None:
        histogram = _HISTOGRAMS[(method, route)] = REQUEST_DURATION.labels(method, route)
    histogram.observe(elapsed)


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message, and the request fields."""

    FIELDS = ("request_id", "trace_id", "actor", "method", "route", "status", "duration_ms")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in self.FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class ConsoleFormatter(logging.Formatter):
    """One readable line per record, for a person at a terminal: time, level, message, and the
    fields that are set (a request reads `GET /fhir/{type} 201 3.1ms actor=... request_id=...`).
    The same records as the JSON lines, and so no more than they carry: never PHI."""

    _COLORS = {"debug": "2", "info": "32", "warning": "33", "error": "31", "critical": "1;31"}

    def __init__(self, *, color: bool = False) -> None:
        super().__init__()
        self.color = color

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        tag = f"{level:<7}"
        if self.color:
            tag = f"\x1b[{self._COLORS.get(level, '0')}m{tag}\x1b[0m"
        message = record.getMessage()
        fields = {name: getattr(record, name, None) for name in JsonFormatter.FIELDS}
        if message == "request" and fields["route"] is not None:
            took = fields.pop("duration_ms")
            message = f"{fields.pop('method')} {fields.pop('route')} {fields.pop('status')}"
            message += "" if took is None else f" {took}ms"
        line = f"{self.formatTime(record, '%H:%M:%S')} {tag} {message}"
        line += "".join(f" {name}={value}" for name, value in fields.items() if value is not None)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _mounted(scope: Scope) -> str | None:
    """The path of the Mount that served the request (the pages' `/static`), which sets no
    `route`: what a Mount adds to `root_path` beyond the application's own."""
    root: str = scope.get("root_path", "")
    app_root: str | None = scope.get("app_root_path")
    if app_root is None or root == app_root or not root.startswith(app_root):
        return None
    return root[len(app_root) :]
