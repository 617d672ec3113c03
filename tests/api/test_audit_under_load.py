"""No AuditEvent is lost under hostile load (issue 11, finding 4).

Many concurrent callers with real tokens, some carrying hostile claims (a 10 KB `fhirUser`, refused
with the token; a 10 KB `client_id` or `sub`, a 3 KB purpose of use or break-glass reason, NUL and unpaired
surrogates), make allowed and denied requests and emergency accesses over HTTP, while the audit
writer process is killed half way. After the server has stopped (and flushed), the AuditEvents
stored are the decisions made, one for one: same number, same agent, interaction, resource and
outcome for each, every bounded one flagged and no other.
"""

from __future__ import annotations

import os
import random
import signal
import string
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg

from fhir_server.settings import Settings
from tests.support.servers import LiveServer
from tests.support.tokens import auth, token

ELLIPSIS = "\u2026"


def _bounded(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 1] + ELLIPSIS


@dataclass(frozen=True)
class Job:
    """One request, and the decision (as its AuditEvent says it) that it must leave behind."""

    headers: dict[str, str]
    path: str
    status: int
    agent: str  # the stored agent: `who.reference`, or `who.identifier.value` for System/Admin
    interaction: str
    resource: str | None
    bounded: bool  # whether the event must say that a value was bounded

    @property
    def decision(self) -> tuple[str, str, str | None, str] | None:
        if self.status == 401:
            return None  # no token, no decision, no event
        return (self.agent, self.interaction, self.resource, "0" if self.status == 200 else "4")


def _event_key(event: dict[str, Any]) -> tuple[str, str, str | None, str]:
    who = event["agent"][0]["who"]
    agent = who["reference"] if "reference" in who else who["identifier"]["value"]
    resources = [e["what"]["reference"] for e in event.get("entity", ()) if "role" not in e]
    return (
        agent,
        event["subtype"][0]["code"],
        resources[0] if resources else None,
        event["outcome"],
    )


def _jobs(tag: str, patients: list[str]) -> list[Job]:
    first, others = patients[0], patients[1:]
    jobs: list[Job] = []
    for n, patient in enumerate(patients):
        headers = auth(patient, "user/*.rs")
        other = patients[(n + 1) % len(patients)]
        jobs += [
            Job(headers, f"/{patient}", 200, patient, "read", patient, False),
            Job(headers, f"/{other}", 403, patient, "read", other, False),
            Job(headers, "/Observation?_count=5", 200, patient, "search-type", None, False),
        ]
    # a 10 KB fhirUser is no R4 id: refused with the token, before any decision (below); an
    # emergency read with a 3 KB reason is decided, and its event bounded
    doctor = f"Practitioner/{tag}-brief"
    headers = auth(doctor, "user/*.rs")
    emergency = {**headers, "X-Purpose-Of-Use": "BTG", "X-Break-Glass-Reason": "r" * 3_000}
    jobs += [
        Job(headers, f"/{first}", 403, doctor, "read", first, False),
        Job(emergency, f"/{first}", 200, doctor, "read", first, True),
    ]
    # an ordinary emergency access: written before the response, and nothing bounded
    doctor = f"Practitioner/{tag}-doctor"
    headers = {
        **auth(doctor, "user/*.rs"),
        "X-Purpose-Of-Use": "BTG",
        "X-Break-Glass-Reason": "unconscious in the emergency room",
    }
    jobs += [Job(headers, f"/{p}", 200, doctor, "read", p, False) for p in others]
    # a 10 KB client_id (System) and sub (Admin), of characters no compression shortens
    noise = "".join(random.Random(11).choices(string.ascii_letters, k=10_000))
    client = f"{tag}-c{noise}"
    headers = auth(None, "system/*.rs", extra={"client_id": client})
    jobs.append(
        Job(headers, f"/{first}", 200, f"System/{_bounded(client, 256)}", "read", first, True)
    )
    subject = f"{tag}-a{noise}"
    headers = auth(None, "system/*.rs", extra={"sub": subject, "roles": ["fhir-admin"]})
    jobs.append(
        Job(headers, f"/{first}", 200, f"Admin/{_bounded(subject, 256)}", "read", first, True)
    )
    # a 3 KB purpose of use on an ordinary read
    headers = {**auth(first, "user/*.rs"), "X-Purpose-Of-Use": "TREAT" + "z" * 3_000}
    jobs.append(Job(headers, f"/{first}", 200, first, "read", first, True))
    # NUL and unpaired surrogates in identity claims, ids that are no R4 id: refused before any
    # decision
    for claims in (
        {"fhirUser": f"Patient/{tag}-p{'p' * 10_000}"},
        {"fhirUser": f"Practitioner/{tag}-d{'d' * 10_000}"},
        {"fhirUser": f"Patient/{tag}-nul\x00"},
        {"sub": f"{tag}-surrogate\ud800"},
        {"client_id": f"{tag}-nul\x00"},
    ):
        bad = token(None, "system/*.rs", extra=claims)
        headers = {"Authorization": f"Bearer {bad}"}
        jobs.append(Job(headers, f"/{first}", 401, "", "read", first, False))
    return jobs


def test_the_audit_events_stored_are_the_decisions_made(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    tag = uuid.uuid4().hex[:12]
    settings = Settings(emergency_bypass=True)
    with LiveServer(settings, database_url) as server:
        base = f"{server.origin}/fhir"
        with httpx.Client(base_url=base, timeout=60, headers=auth()) as system:
            patients = []
            for n in range(4):
                created = system.post(
                    "/Patient", json={"resourceType": "Patient", "gender": "other"}
                ).json()
                patients.append(f"Patient/{created['id']}")
                observation = {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": f"test {n}"},
                    "subject": {"reference": patients[-1]},
                }
                assert system.post("/Observation", json=observation).status_code == 201
        jobs = _jobs(tag, patients) * 6
        random.Random(tag).shuffle(jobs)
        audit = server.server.config.app.state.runtime.audit
        writer = audit.writer_pid
        assert writer is not None

        with httpx.Client(
            base_url=base, timeout=120, limits=httpx.Limits(max_connections=24)
        ) as client:

            def call(job: Job) -> tuple[Job, int]:
                return job, client.get(job.path, headers=job.headers).status_code

            with ThreadPoolExecutor(max_workers=24) as pool:
                half = len(jobs) // 2
                answers = list(pool.map(call, jobs[:half]))
                # the writer process dies with batches in hand (acknowledged or not)
                time.sleep(0.6)
                answers += list(pool.map(call, jobs[half : half + 20]))
                os.kill(writer, signal.SIGKILL)
                answers += list(pool.map(call, jobs[half + 20 :]))
    # the server has stopped: whatever was queued or handed over is stored

    assert [(job.path, status) for job, status in answers] == [
        (job.path, job.status) for job, _ in answers
    ], "every request got the answer its decision gives"
    # (the decision, whether a value of it had to be bounded), as made and as stored
    expected = Counter((job.decision, job.bounded) for job, _ in answers if job.decision)
    known = set(patients)
    rows = db.execute(
        "SELECT content FROM audit_events WHERE true"
        " AND (content->'agent'->0->'who'->>'reference' = ANY(%s)"
        "  OR (content->'agent'->0->'who')::text LIKE %s)",
        (list(known), f"%{tag}%"),
    ).fetchall()
    events = [content for (content,) in rows]
    stored = Counter(
        (_event_key(e), [t["code"] for t in e.get("meta", {}).get("tag", ())] == ["bounded"])
        for e in events
    )
    assert stored == expected, (
        f"lost: {expected - stored}; not decided (or stored twice): {stored - expected}"
    )
    assert len(events) == sum(expected.values()) == len([a for a in answers if a[1] != 401])
    # the bounded emergency access kept the emergency: purpose BTG, reason cut to 200
    emergencies = [
        e
        for e in events
        if e["agent"][0].get("purposeOfUse") and "reference" in e["agent"][0]["who"]
    ]
    assert len(emergencies) == 6 * (1 + len(patients) - 1)
    long_reasons = [e for e in emergencies if e.get("meta", {}).get("tag")]
    assert long_reasons and all(
        e["purposeOfEvent"][0]["text"] == "r" * 199 + ELLIPSIS
        and e["purposeOfEvent"][0]["coding"][0]["code"] == "BTG"
        for e in long_reasons
    )
    # the writer was really gone, and the server stored what it had not acknowledged
    try:
        os.kill(writer, 0)
        raise AssertionError("the audit writer process was not killed")
    except ProcessLookupError:
        pass
