"""The audit trail through a database outage: its writer process tries again without end and drops
nothing; while it is behind by more than `MAX_BUFFERED` events, a request waits and then gets 503
instead of the buffer growing without bound; once the database is back, every event is stored
exactly once, and what is left is written when the trail stops."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from compartments.engine import Decision
from fhir_server.api.errors import status_of
from fhir_server.audit import trail
from fhir_server.audit.trail import AuditTrail
from fhir_server.errors import AuditUnavailable
from fhir_server.services.access.guard import Audited
from fhir_server.services.context import Context, server_guard
from fhir_server.settings import Settings
from fhir_server.storage.database import migrate
from fhir_server.validation import default_validator
from tests.support.pooler import app_database, through_pooler


def _decision(trail_: AuditTrail, n: int, tag: str) -> Any:
    guard = server_guard(f"System/{tag}")
    guard.audited.append(
        Audited("read", "Observation", f"Observation/{tag}-{n}", Decision(allowed=True))
    )
    return trail_.record(guard)


def test_an_outage_loses_nothing_and_bounds_the_buffer(
    admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a database that does not exist yet: to the writer, an unreachable server
    name = f"fhir_test_{uuid.uuid4().hex[:12]}"
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    monkeypatch.setattr(trail, "MAX_BUFFERED", 40)
    monkeypatch.setattr(trail, "BACKPRESSURE_SECONDS", 1.0)
    tag = uuid.uuid4().hex[:8]
    server = Context(
        settings=Settings(), validator=default_validator(), base_url="", guard=server_guard()
    )

    async def go() -> list[str]:
        audit = AuditTrail(app_database(url), server, database_url=through_pooler(url)[0])
        audit.start()
        try:
            for n in range(40):
                await _decision(audit, n, tag)
            await asyncio.sleep(2 * trail.FLUSH_SECONDS)  # handed to the writer, which fails
            assert audit.buffered == 40
            # one more: the writer is behind by more than the bound, so the request waits and
            # is refused; its decision is kept all the same
            started = time.monotonic()
            with pytest.raises(AuditUnavailable) as refused:
                await _decision(audit, 40, tag)
            assert status_of(refused.value) == 503
            assert time.monotonic() - started >= 1.0
            assert audit.buffered == 41
            # the database comes back
            await asyncio.to_thread(_create, admin_url, name, url)
            deadline = time.monotonic() + 90
            while audit.buffered > 0:
                assert time.monotonic() < deadline, "the writer did not catch up"
                await audit.flush()
                await asyncio.sleep(0.2)
            # after the outage the next decision is queued at once; the stop writes it
            await _decision(audit, 41, tag)
        finally:
            await audit.close()
        return [f"Observation/{tag}-{n}" for n in range(42)]

    try:
        expected = asyncio.run(go())
        with psycopg.connect(url) as db:
            rows = db.execute(
                "SELECT content->'entity'->0->'what'->>'reference', count(*) FROM audit_events"
                " GROUP BY 1"
            ).fetchall()
        assert sorted(rows) == sorted((r, 1) for r in expected)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _create(admin_url: str, name: str, url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    migrate(url)


def test_denials_and_emergencies_during_an_outage_are_queued_not_lost(admin_url: str) -> None:
    name = f"fhir_test_{uuid.uuid4().hex[:12]}"
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    tag = uuid.uuid4().hex[:8]
    server = Context(
        settings=Settings(), validator=default_validator(), base_url="", guard=server_guard()
    )

    def guard(n: int, decision: Decision) -> Any:
        caller = server_guard(f"Practitioner/{tag}")
        caller.audited.append(Audited("read", "Patient", f"Patient/{tag}-{n}", decision))
        return caller

    async def go() -> None:
        audit = AuditTrail(app_database(url), server, database_url=through_pooler(url)[0])
        audit.start()
        try:
            # a denial cannot be written before its 403: it is queued, and the 403 stands
            await audit.record(guard(0, Decision(allowed=False, explanation="no")))
            assert audit.buffered == 1
            # an emergency access cannot be written before its response: no response (503),
            # and its event is queued all the same
            with pytest.raises(AuditUnavailable):
                await audit.record(
                    guard(1, Decision(allowed=True, explanation="btg", emergency=True))
                )
            assert audit.buffered == 2
            await asyncio.to_thread(_create, admin_url, name, url)
            deadline = time.monotonic() + 90
            while audit.buffered > 0:
                assert time.monotonic() < deadline, "the queued events were not stored"
                await asyncio.sleep(0.2)
        finally:
            await audit.close()

    try:
        asyncio.run(go())
        with psycopg.connect(url) as db:
            rows = db.execute(
                "SELECT content->'entity'->0->'what'->>'reference', content->>'outcome'"
                " FROM audit_events WHERE true"
            ).fetchall()
        assert sorted(rows) == [(f"Patient/{tag}-0", "4"), (f"Patient/{tag}-1", "0")]
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def test_a_flush_cancelled_mid_store_loses_nothing(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stops (close() cancels the periodic flush) while a flush stores in the server,
    as it does once the writer process is gone: the events of the cancelled store are stored by
    the stop, each once."""
    tag = uuid.uuid4().hex[:8]
    server = Context(
        settings=Settings(), validator=default_validator(), base_url="", guard=server_guard()
    )
    original = trail.store

    async def slow_store(*args: Any, **kwargs: Any) -> int:
        await asyncio.sleep(0.5)  # the flush is cancelled in here
        return await original(*args, **kwargs)

    async def go() -> None:
        # not started: no writer process, so a flush stores in the server (on its pool)
        pool = app_database(database_url)
        await pool.open()
        audit = AuditTrail(pool, server)
        for n in range(20):
            await _decision(audit, n, tag)
        monkeypatch.setattr(trail, "store", slow_store)
        flushing = asyncio.create_task(audit.flush())
        await asyncio.sleep(0.1)
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        monkeypatch.setattr(trail, "store", original)
        await audit.close()
        await pool.close()

    asyncio.run(go())
    with psycopg.connect(database_url) as db:
        rows = db.execute(
            "SELECT content->'entity'->0->'what'->>'reference', count(*) FROM audit_events"
            " WHERE content::text LIKE %s GROUP BY 1",
            (f"%Observation/{tag}-%",),
        ).fetchall()
    assert sorted(rows) == sorted((f"Observation/{tag}-{n}", 1) for n in range(20))
