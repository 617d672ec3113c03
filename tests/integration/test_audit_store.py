"""The audit writer against a real PostgreSQL: a batch with an event the database refuses stores
every other event and the refused one reduced; a lost connection is tried again and every event
is stored exactly once."""

from __future__ import annotations

import asyncio
import random
import string
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg

from fhir_server.audit.trail import Record, audit_row, bound, store, store_until_stored
from fhir_server.services.interactions.create import new_id
from fhir_server.storage.audit_events import COLUMNS
from fhir_server.storage.database import Database
from fhir_server.storage.sql import Connection


def _record(account: str, **changes: Any) -> Record:
    record = Record(
        recorded=datetime.now(UTC),
        account=account,
        operation="read",
        resource="Observation/o-1",
        allowed=True,
        reason=None,
        explanation="",
        rule="Patient * read patient_compartment",
        emergency=False,
        patients=("Patient/p-1",),
        purpose_of_use=None,
        purpose_text=None,
        diff=None,
        id=new_id(),
    )
    return record._replace(**changes)


def _connect(url: str) -> Any:
    async def connect() -> Connection:
        return await psycopg.AsyncConnection.connect(url, autocommit=True, options=Database.OPTIONS)

    return connect


def _stored(db: psycopg.Connection[Any], records: list[Record]) -> dict[str, dict[str, Any]]:
    rows = db.execute(
        "SELECT id, content FROM audit_events WHERE id = ANY(%s)",
        ([r.id for r in records],),
    ).fetchall()
    return dict(rows)


def _incompressible(size: int) -> str:
    # a long value that TOAST cannot shrink below the B-tree limit (about 2,700 bytes)
    return "".join(random.Random(7).choices(string.ascii_letters, k=size))


def test_an_event_the_database_refuses_costs_no_other_event_of_its_batch(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    tag = new_id()[:8]
    good = [_record(f"Patient/{tag}-{n}") for n in range(64)]
    # Records as they were before `bound`: what the database refuses, NUL in jsonb, in two
    # elements (a long value is no longer one: the search index bounds its keys).
    refused = [
        _record(f"Patient/{tag}-nul", explanation="a\x00b"),
        _record(f"Patient/{tag}-op", operation="read\x00"),
    ]
    batch = good[:30] + refused[:1] + good[30:] + refused[1:]

    async def go() -> int:
        conn = await _connect(database_url)()
        async with conn:
            return await store(conn, batch, "test")

    assert asyncio.run(go()) == 2
    stored = _stored(db, batch)
    assert set(stored) == {r.id for r in batch}, "every event of the batch is stored"
    for record in good:
        expected = dict(zip(COLUMNS, audit_row(record, "test"), strict=True))
        assert stored[record.id] == orjson.loads(expected["content"])  # as it was, untagged
        assert "tag" not in stored[record.id]["meta"]
    for record in refused:
        content = stored[record.id]
        assert [t["code"] for t in content["meta"]["tag"]] == ["bounded"]
        assert content["agent"][0]["who"] == {"reference": record.account}
        assert content["outcome"] == "0"
    code = stored[refused[1].id]["subtype"][0]["code"]
    assert "\x00" not in code and code.startswith("read") and len(code) <= 64


def test_bounded_events_are_stored_as_they_are(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    """What `bound` lets through, the database takes without the writer's fallback."""
    tag = new_id()[:8]
    hostile = [
        bound(_record(f"Practitioner/{tag}{'x' * 10_000}")),
        bound(_record(f"Patient/{tag}\x00\ud800")),
        bound(_record(f"System/{tag}{_incompressible(10_000)}")),
        bound(_record(f"Admin/{tag}", operation=_incompressible(10_000))),
        bound(
            _record(
                f"Patient/{tag}-purpose",
                purpose_of_use="TREAT\x00" * 2_000,
                purpose_text="\ud800" * 5_000,
                explanation="\x00" * 5_000,
                diff="x" * 100_000,
            )
        ),
    ]
    assert all(r.bounded for r in hostile)

    async def go() -> int:
        conn = await _connect(database_url)()
        async with conn:
            return await store(conn, hostile, "test")

    assert asyncio.run(go()) == 0, "no event needed the fallback"
    stored = _stored(db, hostile)
    assert set(stored) == {r.id for r in hostile}
    for record in hostile:
        assert [t["code"] for t in stored[record.id]["meta"]["tag"]] == ["bounded"]
        assert stored[record.id]["extension"][0]["valueString"] == " ".join(record.bounded)


def test_a_lost_connection_is_tried_again_and_each_event_stored_once(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    tag = new_id()[:8]
    records = [_record(f"Patient/{tag}-{n}") for n in range(20)]

    async def go() -> None:
        connect = _connect(database_url)
        conn = await connect()
        # the database ends the writer's session (a restart, a failover, an idle timeout)
        pid = conn.info.backend_pid
        db.execute("SELECT pg_terminate_backend(%s)", (pid,))
        conn = await store_until_stored(connect, records[:10], "test", conn=conn)
        assert conn is not None and conn.info.backend_pid != pid
        # a batch whose commit was not acknowledged is handed again, with more events: the
        # ones already stored are not stored twice
        conn = await store_until_stored(connect, records, "test", conn=conn, retried=True)
        assert conn is not None
        # and a retry that does not know it is one is recognised too (the primary key)
        await store(conn, records[:5], "test")
        await conn.close()

    asyncio.run(go())
    rows = db.execute(
        "SELECT id, count(*) FROM audit_events WHERE id = ANY(%s) GROUP BY id",
        ([r.id for r in records],),
    ).fetchall()
    assert sorted(rows) == sorted((r.id, 1) for r in records)
    tagged = db.execute(
        "SELECT count(*) FROM audit_events WHERE true AND content->'meta' ? 'tag' AND id = ANY(%s)",
        ([r.id for r in records],),
    ).fetchone()
    assert tagged == (0,), "an event stored by an earlier try is not stored again reduced"
