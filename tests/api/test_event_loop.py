"""One request must not stall everyone (issue 11, finding 5).

A hostile request (a large AuditEvent, a JSON Patch that copies an array into itself again and
again, a large transaction, a costly search) runs while another client reads one Patient over and
over; no read may take longer than READ_BOUND_SECONDS. Before the fix, the AuditEvent held every
other client up for about 6 seconds and the patch for 25 on this machine; now reads stay under a
few hundred milliseconds. The bound is deliberately generous (the machine is shared): it is the
bound docs/limits.md promises, and the one place where the suite asserts a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support.servers import LiveServer
from tests.support.tokens import auth

READ_BOUND_SECONDS = 3.0


def large_audit_event(entities: int) -> dict[str, Any]:
    return {
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "recorded": "2020-01-01T00:00:00Z",
        "agent": [{"requestor": i == 0, "who": {"display": f"agent {i}"}} for i in range(2000)],
        "source": {"observer": {"display": "x"}},
        "entity": [
            {
                "what": {"reference": f"Patient/p{i}"},
                "description": "d" * 50,
                "detail": [{"type": "t", "valueString": "v" * 40}],
            }
            for i in range(entities)
        ],
    }


class Reader:
    """Reads one Patient every 20 ms on its own connection, recording each read's latency."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(headers=auth(), timeout=120) as http:
            while not self.stop.is_set():
                started = time.perf_counter()
                response = http.get(self.url)
                self.latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    self.failures.append(response.text)
                time.sleep(0.02)

    def __enter__(self) -> Reader:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=120)


def hostile_requests(
    http: httpx.Client, patient_id: str
) -> list[tuple[str, Callable[[], httpx.Response]]]:
    names = [{"family": "x" * 1000}] * 10
    copies = [{"op": "copy", "from": "/name", "path": "/name/-"}] * 19
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "name": [{"family": f"Loop{i}"}]},
                "request": {"method": "POST", "url": "Patient"},
            }
            for i in range(3000)
        ],
    }
    return [
        ("audit event", lambda: http.post("/AuditEvent", json=large_audit_event(9999))),
        (
            "self-copying patch",
            lambda: http.patch(
                f"/Patient/{patient_id}",
                json=[{"op": "add", "path": "/name", "value": names}, *copies],
                headers={"Content-Type": "application/json-patch+json"},
            ),
        ),
        ("transaction", lambda: http.post("", json=transaction)),
        (
            "search",
            lambda: http.get(
                "/Patient",
                params={
                    "name:contains": "o",
                    "_count": "1000",
                    "_revinclude": "Observation:subject",
                    "_elements": "name",
                },
            ),
        ),
    ]


@pytest.mark.parametrize("index", range(4), ids=["audit", "patch", "transaction", "search"])
def test_a_hostile_request_does_not_delay_a_concurrent_read(
    live_server: LiveServer, client: httpx.Client, index: int
) -> None:
    patient = client.post("/Patient", json={"resourceType": "Patient"}).json()
    base = f"{live_server.origin}/fhir"
    http = httpx.Client(base_url=base, headers=auth(), timeout=300)
    name, send = hostile_requests(http, patient["id"])[index]
    with http, Reader(f"{base}/Patient/{patient['id']}") as reader:
        time.sleep(0.3)  # the reader is going
        seen = len(reader.latencies)
        started = time.perf_counter()
        response = send()
        took = time.perf_counter() - started
        reads = reader.latencies[seen:]
    assert response.status_code in {200, 201, 400}, response.text[:500]
    assert not reader.failures
    # a request refused at once leaves no time for reads; a long one must let them through
    assert reads or took < 0.5, f"no read completed while the {name} ran ({took:.2f} s)"
    slowest = max(reader.latencies)
    assert slowest < READ_BOUND_SECONDS, (
        f"a read took {slowest:.2f} s while the {name} ran ({took:.2f} s)"
    )
