"""The last-resort middleware (fhir_server/api/lastresort.py) over real HTTP: what escaped every
handler becomes an OperationOutcome without internals, library errors that the request caused
become 400, and the connection stays open for the client's next request.

The server's own routes no longer let such errors escape (tests/api/test_hostile_input.py); these
routes raise them on purpose, behind the same middleware the server installs.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections.abc import Iterator

import psycopg
import psycopg.errors
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fhir_server.api.lastresort import LastResort
from tests.support.servers import free_port

SECRET = "password=hunter2 host=db.internal"


async def recursion(request: Request) -> Response:
    raise RecursionError("maximum recursion depth exceeded")


async def data_error(request: Request) -> Response:
    try:
        raise psycopg.errors.NumericValueOutOfRange(f"numeric field overflow ({SECRET})")
    except psycopg.Error as exc:
        raise RuntimeError("the statement failed") from exc


async def overflow(request: Request) -> Response:
    raise OverflowError("date value out of range")


async def bug(request: Request) -> Response:
    raise KeyError(SECRET)


async def fine(request: Request) -> Response:
    return Response(b"{}", media_type="application/json")


async def echo_body(request: Request) -> Response:
    return Response(str(len(await request.body())).encode())


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    # where the server installs it: inside Starlette's own error middleware
    app = Starlette(
        routes=[
            Route("/recursion", recursion),
            Route("/data", data_error),
            Route("/overflow", overflow),
            Route("/bug", bug),
            Route("/fine", fine),
            Route("/body", echo_body, methods=["POST"]),
        ],
        middleware=[Middleware(LastResort, max_body_bytes=1000, max_parameters=3)],
    )
    number = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=number, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    yield number
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/recursion", 400, "too-costly"),
        ("/data", 400, "value"),
        ("/overflow", 400, "value"),
        ("/bug", 500, "exception"),
        ("/fine?a=1&b=2&c=3", 200, None),
        ("/fine?a=1&b=2&c=3&d=4", 400, "too-costly"),
        ("/fine?a=%00", 400, "value"),
    ],
)
def test_escaped_errors_become_outcomes_on_a_connection_that_stays_open(
    port: int, caplog: pytest.LogCaptureFixture, path: str, status: int, code: str | None
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        with caplog.at_level(logging.INFO):
            for _ in range(2):  # the same connection, twice
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                assert response.status == status
                if code is not None:
                    outcome = json.loads(body)
                    assert outcome["resourceType"] == "OperationOutcome"
                    assert outcome["issue"][0]["code"] == code
                    assert "hunter2" not in body.decode() and "psycopg" not in body.decode()
            connection.request("GET", "/fine")
            assert connection.getresponse().status == 200
    finally:
        connection.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert bool(errors) == (status == 500)
    for record in errors:
        assert "unhandled error on GET" in record.getMessage()
        assert "KeyError at test_last_resort.py" in record.getMessage()
    # the exception's text may hold a value of the request: never in the log
    assert "hunter2" not in caplog.text


def test_the_body_limit_holds_for_declared_and_streamed_bodies(port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/body", body=b"x" * 1000)
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, b"1000")
        connection.request("POST", "/body", body=b"x" * 1001)
        response = connection.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["issue"][0]["code"] == "too-costly"
    finally:
        connection.close()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/body", body=iter([b"x" * 600, b"x" * 600]))  # chunked
        response = connection.getresponse()
        assert response.status == 413
    finally:
        connection.close()
