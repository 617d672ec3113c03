"""The AuditEvent store (migration 0010, storage/audit_events.py) against a real PostgreSQL: events
land in the partition of their month (or DEFAULT, moved when that month's partition is made); a
read by id looks in one partition; searches by patient, agent, entity, type, outcome and date
find exactly their events and nothing the caller may not see; the archive of a past month holds
exactly its events, drops only that partition, and a failure drops nothing."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fhir_server.audit.trail import Record, store
from fhir_server.errors import BadRequest
from fhir_server.search.grants import Everything, InCompartments
from fhir_server.search.query import parse_search
from fhir_server.services.workflows import audit_store
from fhir_server.storage import audit_events
from fhir_server.storage.audit_events import stamped_id, window_of
from fhir_server.storage.database import Database, migrate
from fhir_server.storage.search_sql import audit_read_statement, search_statement, sort_keys

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)
EXE = str(Path(sys.executable).parent / "fhir-server")


@pytest.fixture
def url(empty_database: str) -> str:
    migrate(empty_database)
    return empty_database


def _record(recorded: datetime, account: str, patient: str, **changes: Any) -> Record:
    record = Record(
        recorded=recorded,
        account=account,
        operation="read",
        resource=f"Observation/o-{patient[-1]}",
        allowed=True,
        reason=None,
        explanation="",
        rule=None,
        emergency=False,
        patients=(patient,),
        purpose_of_use=None,
        purpose_text=None,
        diff=None,
        id=stamped_id(recorded),
    )
    return record._replace(**changes)


def _run(url: str, work: Any) -> Any:
    async def go() -> Any:
        db = Database(url, pool_size=3)
        await db.open()
        try:
            async with db.connection() as conn:
                return await work(conn, db)
        finally:
            await db.close()

    return asyncio.run(go())


def _store(url: str, records: list[Record]) -> None:
    async def work(conn: Any, db: Database) -> None:
        await store(conn, records, "test")

    _run(url, work)


def _partition_of(db: psycopg.Connection[Any], id: str) -> str:
    row = db.execute("SELECT tableoid::regclass::text FROM audit_events WHERE id = %s", (id,))
    found = row.fetchone()
    assert found is not None
    return str(found[0])


def test_events_land_in_their_month_and_wait_in_default_for_a_missing_one(url: str) -> None:
    march = _record(datetime(2026, 3, 9, 8, tzinfo=UTC), "Practitioner/1", "Patient/1")
    april = _record(datetime(2026, 4, 2, 8, tzinfo=UTC), "Practitioner/1", "Patient/2")

    async def partitions(conn: Any, db: Database) -> list[str]:
        return await audit_events.ensure_partitions(conn, datetime(2026, 3, 1, tzinfo=UTC), 0)

    assert _run(url, partitions) == ["audit_events_2026_03"]
    _store(url, [march, april])
    with psycopg.connect(url) as db:
        assert _partition_of(db, march.id) == "audit_events_2026_03"
        assert _partition_of(db, april.id) == "audit_events_default"

    async def april_too(conn: Any, db: Database) -> list[str]:
        return await audit_events.ensure_partitions(conn, datetime(2026, 4, 1, tzinfo=UTC), 0)

    assert _run(url, april_too) == ["audit_events_2026_04"]
    with psycopg.connect(url) as db:
        # moved out of DEFAULT, and stored once
        assert _partition_of(db, april.id) == "audit_events_2026_04"
        assert db.execute("SELECT count(*) FROM audit_events").fetchone() == (2,)
    # made already: nothing to do
    assert _run(url, april_too) == []


def test_a_retried_batch_is_stored_once(url: str) -> None:
    records = [
        _record(datetime(2026, 12, 1, 0, 0, n, tzinfo=UTC), "Practitioner/1", "Patient/1")
        for n in range(5)
    ]
    _store(url, records[:3])

    async def again(conn: Any, db: Database) -> None:
        await store(conn, records, "test", retried=True)

    _run(url, again)
    with psycopg.connect(url) as db:
        rows = db.execute("SELECT id, count(*) FROM audit_events GROUP BY id").fetchall()
    assert sorted(rows) == sorted((r.id, 1) for r in records)


def test_a_read_by_id_looks_in_one_partition(url: str) -> None:
    event = _record(NOW, "Practitioner/1", "Patient/1")
    _store(url, [event])
    window = window_of(event.id)
    assert window is not None and window[0] <= NOW < window[1]
    query = audit_read_statement(event.id, Everything(), window)
    with psycopg.connect(url) as db:
        months = [
            r[0]
            for r in db.execute(
                "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE 'audit_events_2%%'"
            )
        ]
        assert len(months) >= 2  # this month and the next, made by the migration
        plan = "\n".join(r[0] for r in db.execute(f"EXPLAIN {query.sql}", query.params).fetchall())
        scanned = [m for m in [*months, "audit_events_default"] if m in plan]
        assert scanned == ["audit_events_2026_12"], plan
        row = db.execute(query.sql, query.params).fetchone()
    assert row is not None and json.loads(row[1])["id"] == event.id


def _search(url: str, params: list[tuple[str, str]], grants: Any = None) -> list[str]:
    query = parse_search(("AuditEvent",), params)
    statement, _ = search_statement(query, grants or Everything(), now=NOW)
    with psycopg.connect(url) as db:
        return [r[1] for r in db.execute(statement.sql, statement.params).fetchall()]


def test_searches_find_exactly_their_events_and_only_visible_ones(url: str) -> None:
    one = _record(datetime(2026, 11, 3, tzinfo=UTC), "Practitioner/7", "Patient/1")
    two = _record(datetime(2026, 12, 2, tzinfo=UTC), "RelatedPerson/9", "Patient/2")
    denied = _record(
        datetime(2026, 12, 3, tzinfo=UTC),
        "Practitioner/7",
        "Patient/2",
        allowed=False,
        reason="invalid_compartment",
        operation="update",
    )
    _store(url, [one, two, denied])
    everything = {one.id, two.id, denied.id}
    assert set(_search(url, [])) == everything
    assert set(_search(url, [("patient", "Patient/2")])) == {two.id, denied.id}
    assert set(_search(url, [("patient:Patient", "1")])) == {one.id}
    assert set(_search(url, [("agent", "Practitioner/7")])) == {one.id, denied.id}
    assert set(_search(url, [("entity", "Observation/o-1")])) == {one.id}
    assert set(_search(url, [("entity", "o-2")])) == {two.id, denied.id}  # any type
    assert set(_search(url, [("outcome", "4")])) == {denied.id}
    assert set(_search(url, [("action", "U")])) == {denied.id}
    assert set(_search(url, [("subtype", "read")])) == {one.id, two.id}
    rest = "http://terminology.hl7.org/CodeSystem/audit-event-type"
    assert set(_search(url, [("type", f"{rest}|rest")])) == everything
    assert set(_search(url, [("type", f"{rest}|")])) == everything
    assert _search(url, [("type", "other|rest")]) == []
    assert set(_search(url, [("date", "ge2026-12")])) == {two.id, denied.id}
    assert set(_search(url, [("date", "2026-11")])) == {one.id}
    assert set(_search(url, [("date", "lt2026-12-03")])) == {one.id, two.id}
    assert _search(url, [("_sort", "-date")]) == [denied.id, two.id, one.id]
    assert _search(url, [("_sort", "date"), ("patient", "Patient/2")]) == [two.id, denied.id]
    # a caller who sees Patient/1 only: Patient/2's events are not there, whatever it asks
    only_one = InCompartments(frozenset({"Patient/1"}))
    assert set(_search(url, [], only_one)) == {one.id}
    assert _search(url, [("patient", "Patient/2")], only_one) == []
    assert _search(url, [("_id", two.id)], only_one) == []


def test_paging_goes_through_every_event_once(url: str) -> None:
    records = [
        _record(datetime(2026, 12, 1, 0, n, tzinfo=UTC), "Practitioner/1", "Patient/1")
        for n in range(7)
    ]
    _store(url, records)
    seen: list[str] = []
    cursor: str | None = None
    from fhir_server.storage.cursors import encode_cursor

    while True:
        params = [("_sort", "-date"), ("_count", "3")] + ([("_page", cursor)] if cursor else [])
        query = parse_search(("AuditEvent",), params)
        statement, _ = search_statement(query, Everything(), now=NOW)
        with psycopg.connect(url) as db:
            rows = db.execute(statement.sql, statement.params).fetchall()
        seen += [r[1] for r in rows[:3]]
        if len(rows) <= 3:
            break
        cursor = encode_cursor(sort_keys(rows[2]))
    assert seen == [r.id for r in reversed(records)]


@pytest.mark.parametrize(
    "params",
    [
        [("entity-role", "1")],
        [("address", "x")],
        [("entity:identifier", "x|y")],
        [("_include", "AuditEvent:entity")],
        [("_sort", "outcome")],
        [("agent.name", "x")],
    ],
)
def test_what_the_table_cannot_answer_is_a_400_naming_it(params: list[tuple[str, str]]) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_search(("AuditEvent",), params)
    name, value = params[0][0].split(":")[0].split(".")[0], params[0][1]
    assert name in str(refused.value) or value in str(refused.value)
    # with `Prefer: handling=lenient` it is left out
    lenient = parse_search(("AuditEvent",), params, strict=False)
    assert lenient.criteria == () and lenient.includes == () and lenient.sort == ()


def test_has_audit_event_is_refused() -> None:
    with pytest.raises(BadRequest, match="_has:AuditEvent"):
        parse_search(("Patient",), [("_has:AuditEvent:entity:agent", "Practitioner/1")])


# --- archive -----------------------------------------------------------------------------------


def _archive_setup(url: str) -> tuple[list[Record], list[Record], list[Record]]:
    async def months(conn: Any, db: Database) -> None:
        for month in (1, 2, 3):
            await audit_events.ensure_partitions(conn, datetime(2025, month, 1, tzinfo=UTC), 0)

    _run(url, months)
    january = [
        _record(datetime(2025, 1, 5 + n, tzinfo=UTC), "Practitioner/1", "Patient/1")
        for n in range(4)
    ]
    february = [
        _record(datetime(2025, 2, 5 + n, tzinfo=UTC), "Practitioner/1", "Patient/2")
        for n in range(3)
    ]
    march = [_record(datetime(2025, 3, 5, tzinfo=UTC), "Practitioner/1", "Patient/3")]
    _store(url, january + february + march)
    return january, february, march


def test_archive_writes_whole_past_months_then_drops_only_them(url: str, tmp_path: Path) -> None:
    january, february, march = _archive_setup(url)
    before = audit_events.parse_month("2025-03")

    async def plan(conn: Any, db: Database) -> audit_store.ArchivePlan:
        return await audit_store.plan_archive(db, before)

    planned = _run(url, plan)
    assert [name for name, _ in planned.months] == ["audit_events_2025_01", "audit_events_2025_02"]

    async def archive(conn: Any, db: Database) -> list[audit_events.Archived]:
        return await audit_store.archive(db, planned, tmp_path)

    done = _run(url, archive)
    assert [(d.month, d.events) for d in done] == [("2025-01", 4), ("2025-02", 3)]
    for archived, records in zip(done, (january, february), strict=True):
        data = archived.path.read_bytes()
        lines = gzip.decompress(data).splitlines()
        assert sorted(json.loads(line)["id"] for line in lines) == sorted(r.id for r in records)
        assert all(json.loads(line)["resourceType"] == "AuditEvent" for line in lines)
        checksum = archived.path.with_name(archived.path.name + ".sha256").read_text()
        assert checksum.split()[0] == hashlib.sha256(data).hexdigest() == archived.sha256
    with psycopg.connect(url) as db:
        tables = {
            r[0] for r in db.execute("SELECT relname FROM pg_class WHERE relkind IN ('r', 'p')")
        }
        assert "audit_events_2025_01" not in tables and "audit_events_2025_02" not in tables
        assert "audit_events_2025_03" in tables
        left = {r[0] for r in db.execute("SELECT id FROM audit_events")}
    assert left == {r.id for r in march}


def test_a_failed_archive_drops_nothing(url: str, tmp_path: Path) -> None:
    january, february, march = _archive_setup(url)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    before = audit_events.parse_month("2025-03")

    async def archive(conn: Any, db: Database) -> None:
        planned = await audit_store.plan_archive(db, before)
        await audit_store.archive(db, planned, blocker / "archive")

    with pytest.raises(NotADirectoryError):
        _run(url, archive)

    async def into_a_file(conn: Any, db: Database) -> None:
        # the directory exists but the file cannot be made (a directory in its place)
        (tmp_path / "dir").mkdir()
        (tmp_path / "dir" / "audit-events-2025-01.ndjson.gz.partial").mkdir()
        planned = await audit_store.plan_archive(db, before)
        await audit_store.archive(db, planned, tmp_path / "dir")

    with pytest.raises(IsADirectoryError):
        _run(url, into_a_file)
    with psycopg.connect(url) as db:
        left = {r[0] for r in db.execute("SELECT id FROM audit_events")}
    assert left == {r.id for r in january + february + march}


# --- the commands ------------------------------------------------------------------------------


def _cli(url: str, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "POSTGRES_URL": url,
        "FHIR_DATA_DIR": str(tmp_path / "data"),
        "FHIR_MIGRATE_ON_START": "false",
        "LOG_LEVEL": "warning",
        **env,
    }
    return subprocess.run(
        [EXE, "audit", *args], env=environment, capture_output=True, text=True, timeout=120
    )


def test_the_commands_do_only_what_they_are_asked(url: str, tmp_path: Path) -> None:
    _archive_setup(url)
    archive_dir = tmp_path / "archive"
    # nothing unasked: no --before and no retention setting
    refused = _cli(url, tmp_path, "archive", "--to", str(archive_dir))
    assert refused.returncode == 2 and "nothing is archived unasked" in refused.stderr
    dry = _cli(
        url, tmp_path, "archive", "--before", "2025-03", "--to", str(archive_dir), "--dry-run"
    )
    assert dry.returncode == 0, dry.stderr
    assert "would archive 2025-01" in dry.stdout and "would archive 2025-02" in dry.stdout
    assert not archive_dir.exists()
    with psycopg.connect(url) as db:
        assert db.execute("SELECT count(*) FROM audit_events").fetchone() == (8,)
    # an event of a month without a partition waits in DEFAULT; `--from` makes its month
    old = _record(datetime(2024, 11, 5, tzinfo=UTC), "Practitioner/1", "Patient/4")
    _store(url, [old])
    made = _cli(url, tmp_path, "partitions", "--from", "2024-11", "--months", "0")
    assert made.returncode == 0, made.stderr
    assert "audit_events_2024_11" in made.stdout
    with psycopg.connect(url) as db:
        assert _partition_of(db, old.id) == "audit_events_2024_11"
    # the retention setting: keep this month and the eleven before it
    done = _cli(
        url, tmp_path, "archive", "--to", str(archive_dir), FHIR_AUDIT_RETENTION_MONTHS="12"
    )
    assert done.returncode == 0, done.stderr
    assert (
        "archived 2025-01: 4 events" in done.stdout and "archived 2024-11: 1 events" in done.stdout
    )
    with psycopg.connect(url) as db:
        assert db.execute("SELECT count(*) FROM audit_events").fetchone() == (0,)
    # every month from 2024-11 has a partition now (empty ones too): each has its file
    names = {p.name for p in archive_dir.iterdir()}
    for month in ("2024-11", "2024-12", "2025-01", "2025-02", "2025-03"):
        assert {
            f"audit-events-{month}.ndjson.gz",
            f"audit-events-{month}.ndjson.gz.sha256",
        } <= names
    empty = gzip.decompress((archive_dir / "audit-events-2024-12.ndjson.gz").read_bytes())
    assert empty == b""
