"""OpenTelemetry traces from a real `fhir-server serve` process to a real OTLP/HTTP receiver:
the request's server span continues the caller's W3C trace, database statements are client
spans beneath it, and no span carries PHI."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support.servers import server_processes
from tests.support.tokens import auth

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP trace receiver: it keeps every span posted to /v1/traces."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.resources: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    attributes = {
                        a.key: a.value.string_value for a in resource_spans.resource.attributes
                    }
                    for scope_spans in resource_spans.scope_spans:
                        receiver.spans.extend(scope_spans.spans)
                        receiver.resources.append(attributes)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, done: Any, timeout: float = 20) -> list[Any]:
        deadline = time.monotonic() + timeout
        while not done(self.spans):
            assert time.monotonic() < deadline, [s.name for s in self.spans]
            time.sleep(0.1)
        return self.spans


@pytest.fixture(scope="module")
def traced(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    receiver = Receiver()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "fhir-server-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    logs = tmp_path_factory.mktemp("traced")
    with server_processes(database_url, logs, env=env) as (base,):
        yield base, receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def hex_id(raw: bytes) -> str:
    return raw.hex()


def test_a_request_continues_the_callers_trace_with_database_spans(traced: Any) -> None:
    base, receiver = traced
    created = httpx.post(
        f"{base}/fhir/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Quixotesque"}]},
        headers=auth(),
    )
    assert created.status_code == 201
    id = created.json()["id"]
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    read = httpx.get(f"{base}/fhir/Patient/{id}", headers={**auth(), "traceparent": traceparent})
    assert read.status_code == 200

    def ours(spans: list[Any]) -> list[Any]:
        return [s for s in spans if hex_id(s.trace_id) == TRACE_ID]

    spans = ours(receiver.wait(lambda all: any(s.kind == 2 for s in ours(all))))
    server = [s for s in spans if s.kind == 2]  # SPAN_KIND_SERVER
    assert len(server) == 1, [s.name for s in server]  # FastAPI's own spans are off
    request = server[0]
    assert request.name == "GET /fhir/{type}/{id:fhir_id}"
    assert hex_id(request.parent_span_id) == PARENT_ID
    attributes = {a.key: a.value for a in request.attributes}
    assert attributes["http.response.status_code"].int_value == 200
    assert id not in attributes["http.route"].string_value  # the template, not the path

    database = [s for s in spans if s.kind == 3]  # SPAN_KIND_CLIENT
    assert database, "database statements are spans"
    assert all(s.parent_span_id == request.span_id for s in database)
    statements = [
        {a.key: a.value.string_value for a in s.attributes}["db.query.text"] for s in database
    ]
    assert any("FROM resources" in text for text in statements)
    assert all(s.start_time_unix_nano >= request.start_time_unix_nano for s in database)
    assert {"service.name": "fhir-server-under-test"}.items() <= receiver.resources[0].items()

    # a request without traceparent starts its own trace
    post = next(
        s for s in receiver.spans if s.kind == 2 and s.name == "POST /fhir/{type:fhir_type}"
    )
    assert hex_id(post.trace_id) != TRACE_ID and post.parent_span_id == b""


def test_no_span_carries_phi(traced: Any) -> None:
    """Neither the body of a create nor the query of a search (PHI in FHIR) reaches a span."""
    base, receiver = traced
    phi = ("Zanzibarova", "1961-07-13")
    created = httpx.post(
        f"{base}/fhir/Patient",
        json={"resourceType": "Patient", "name": [{"family": phi[0]}], "birthDate": phi[1]},
        headers=auth(),
    )
    assert created.status_code == 201
    found = httpx.get(
        f"{base}/fhir/Patient", params={"family": phi[0], "birthdate": phi[1]}, headers=auth()
    )
    assert len(found.json()["entry"]) == 1
    spans = receiver.wait(
        lambda all: any(s.kind == 2 and s.name == "GET /fhir/{type}" for s in all)
    )
    text = "".join(str(s) for s in spans)
    assert "FROM resources" in text  # the statements are there, with their values bound
    for value in phi:
        assert value not in text
