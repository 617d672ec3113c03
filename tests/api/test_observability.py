"""Request logs and metrics: every request is one JSON log line with its request id, trace id,
actor, route template, status and duration, and no PHI ever reaches the logs; Prometheus has the
request counts, latencies and the database pool."""

from __future__ import annotations

import logging
import uuid

import httpx
import pytest

from fhir_server.api.observability import JsonFormatter
from tests.support.servers import LiveServer
from tests.support.tokens import auth

NAME = "Zebulonovich" + uuid.uuid4().hex[:6]
PHI = (NAME, "1961-07-14", "zeb.private@example.org", "+254799123456", "42 Secret Lane")


def test_no_phi_reaches_the_logs(live_server: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    base = f"{live_server.origin}/fhir"
    patient = {
        "resourceType": "Patient",
        "name": [{"family": NAME}],
        "birthDate": PHI[1],
        "telecom": [{"system": "email", "value": PHI[2]}, {"system": "phone", "value": PHI[3]}],
        "address": [{"line": [PHI[4]]}],
    }
    trace = "00-" + uuid.uuid4().hex + "-" + uuid.uuid4().hex[:16] + "-01"
    with caplog.at_level(logging.DEBUG):
        created = httpx.post(
            f"{base}/Patient",
            json=patient,
            headers={**auth(), "traceparent": trace, "X-Request-ID": "req-1"},
        )
        assert created.status_code == 201 and created.headers["X-Request-ID"] == "req-1"
        httpx.get(
            f"{base}/Patient",
            params={"name": NAME, "birthdate": PHI[1], "email": PHI[2]},
            headers=auth(),
        )
        httpx.post(f"{base}/Patient", json={**patient, "gender": "robot"}, headers=auth())  # 400
        httpx.get(
            f"{base}/Patient/{created.json()['id']}",
            headers=auth(f"Patient/{uuid.uuid4()}", "user/*.rs"),
        )  # 403
        httpx.post(
            f"{live_server.origin}/api/v1/patients", json={"given_name": NAME, "email": PHI[2]}
        )  # 401
        httpx.post(
            f"{live_server.origin}/graphql", json={"query": "{ me { name } }"}, headers=auth()
        )
    formatter = JsonFormatter()
    # the server runs in this process: leave out the test's own HTTP client's records
    lines = [
        formatter.format(record)
        for record in caplog.records
        if not record.name.startswith(("httpx", "httpcore"))
    ]
    assert lines
    for line in lines:
        for secret in PHI:
            assert secret not in line, (secret, line)
    requests = [line for line in lines if '"message":"request"' in line]
    assert any('"request_id":"req-1"' in line and trace.split("-")[1] in line for line in requests)
    assert any(
        '"route":"/fhir/{type:fhir_type}"' in line and '"status":201' in line for line in requests
    )
    assert any('"actor":"System/fhir-server-dev"' in line for line in requests)


def test_metrics_have_requests_latency_and_the_pool(live_server: LiveServer) -> None:
    httpx.get(f"{live_server.origin}/fhir/metadata")
    # reads are plain Starlette routes: labelled by their template too, never `unmatched`
    assert httpx.get(f"{live_server.origin}/fhir/Patient/nobody", headers=auth()).is_error
    text = httpx.get(f"{live_server.origin}/metrics").text
    assert 'http_requests_total{method="GET",route="/fhir/metadata",status="200"}' in text
    assert 'route="/fhir/{type}/{id:fhir_id}",status="404"' in text
    # `unmatched` is for paths no route serves (404), never for an answered request
    assert 'route="unmatched",status="2' not in text
    assert 'db_pool_connections{figure="max"}' in text
    assert "http_request_duration_seconds_bucket" in text
    assert 'db_pool_connections{figure="size"}' in text
