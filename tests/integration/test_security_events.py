"""The authorization server's events (`AuditTrail.security_event`) are AuditEvents like every
decision's: a refusal is stored before the caller hears of it, a success within the flush, and
the patients it concerns can find it by `entity`."""

from __future__ import annotations

import asyncio
import uuid

import psycopg

from fhir_server.audit.trail import AuditTrail
from fhir_server.services.context import Context, server_guard
from fhir_server.settings import Settings
from fhir_server.validation import default_validator
from tests.support.pooler import app_database


def test_security_events_are_audit_events_of_their_own_type(database_url: str) -> None:
    tag = uuid.uuid4().hex[:12]
    server = Context(
        settings=Settings(),
        validator=default_validator(),
        base_url="",
        guard=server_guard(),
    )

    async def go() -> int:
        pool = app_database(database_url)
        await pool.open()
        audit = AuditTrail(pool, server)
        await audit.security_event(
            account=f"Person/{tag}",
            event="sign-in",
            allowed=False,
            reason="locked",
            explanation="the account is locked after repeated failures",
        )
        urgent = audit.buffered  # a refusal is not queued: it is stored already
        await audit.security_event(
            account=f"Person/{tag}",
            event="approve",
            allowed=True,
            explanation="client growth-chart approved for Patient/1",
            patients=[f"Patient/{tag}"],
        )
        await audit.close()  # flushes the queue
        await pool.close()
        return urgent

    assert asyncio.run(go()) == 0
    with psycopg.connect(database_url) as db:
        rows = db.execute(
            "SELECT content FROM audit_events WHERE true"
            " AND content->'agent'->0->'who'->>'reference' = %s"
            " ORDER BY content->>'recorded'",
            (f"Person/{tag}",),
        ).fetchall()
        found = db.execute(
            "SELECT count(*) FROM audit_events WHERE true AND %s = ANY(compartments)",
            (f"Patient/{tag}",),
        ).fetchone()
    events = [r[0] for r in rows]
    assert [e["subtype"][0]["code"] for e in events] == ["sign-in", "approve"]
    assert all(e["type"]["code"] == "110114" for e in events)
    assert [e["outcome"] for e in events] == ["4", "0"]
    assert events[0]["outcomeDesc"].startswith("locked: the account is locked")
    assert found is not None and found[0] == 1
