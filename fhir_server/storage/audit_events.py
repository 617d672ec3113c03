"""The AuditEvent store: a table partitioned by month of `recorded` (migration 0010,
docs/scaling.md "The audit stream").

Every AuditEvent, the audit trail's (audit/trail.py, in batches with COPY) and a client's
(`POST AuditEvent`, through repository.insert_new), is one row of `audit_events`: its JSON, the
compartments the security predicate filters on (as `resources.compartments`), and the values its
searches ask for as columns (`row_of`). There is no history row and no generic search-index row.

Partitions: one per calendar month (UTC), named `audit_events_YYYY_MM`, made ahead of time by
`ensure_partitions` (at server start and by `fhir-server audit partitions`); an event of a month
without one lands in `audit_events_default`, and making that month's partition later moves them.
`archive_month` writes a month to a gzip NDJSON file and only then drops its partition.

An event's id carries its time: `stamped_id` is a UUID version 7 whose milliseconds are those of
`recorded`, so a read by id (`window_of`) looks in the one partition that can hold it. Ids that do
not (events stored before this table, or a client's event whose `recorded` is outside the range
a UUID v7 holds) are found by a read of every partition's key index, only when the first misses.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import ARRAY

from fhir_server.search.grants import Grants
from fhir_server.storage.search_sql import audit_read_statement
from fhir_server.storage.sql import Connection, Query, copy_rows, fetch_one, text_array
from fhir_server.storage.tables import audit_events

TABLE = audit_events.name
DEFAULT_PARTITION = f"{TABLE}_default"
# Months made ahead of the current one by `ensure_partitions` when nobody says otherwise.
MONTHS_AHEAD = 2
# A transaction-scoped advisory lock (pooler-safe) that serializes partition changes between
# servers starting at the same time and the maintenance commands.
_PARTITION_LOCK = 0x41554454  # "AUDT"
_PARTITION_NAME = re.compile(rf"^{TABLE}_(\d{{4}})_(\d{{2}})$")

COLUMNS = (
    "id",
    "recorded",
    "last_updated",
    "content",
    "compartments",
    "patients",
    "agents",
    "entities",
    "types",
    "subtypes",
    "action",
    "outcome",
    "policies",
    "tags",
)

_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_MILLISECONDS = (1 << 48) - 1
_MILLISECOND = timedelta(milliseconds=1)


# --- ids -------------------------------------------------------------------------------------


def stamped_id(recorded: datetime) -> str:
    """A UUID version 7 (RFC 9562) whose timestamp is `recorded` (to the millisecond) and whose
    other 74 bits are random: unguessable, and it names the partition of its event. One is made
    for every audited request, so it is formatted directly rather than through `uuid.UUID`."""
    milliseconds = _milliseconds(recorded)
    if milliseconds is None:
        # outside what v7 holds: the id names no partition of its own (found by the slow read)
        milliseconds = 0 if recorded.year < 1970 else _MAX_MILLISECONDS
    random = int.from_bytes(os.urandom(10))
    value = (
        milliseconds << 80
        | 0x7 << 76
        | (random >> 62 & 0xFFF) << 64
        | 0b10 << 62
        | random & (1 << 62) - 1
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _milliseconds(moment: datetime) -> int | None:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    milliseconds = (moment - _UNIX_EPOCH) // _MILLISECOND
    return milliseconds if 0 <= milliseconds <= _MAX_MILLISECONDS else None


def window_of(id: str) -> tuple[datetime, datetime] | None:
    """The millisecond a UUID v7 id names: [start, start + 1 ms); None for another id."""
    if len(id) != 36:
        return None
    try:
        value = uuid.UUID(id)
    except ValueError:
        return None
    if value.version != 7:
        return None
    start = _UNIX_EPOCH + timedelta(milliseconds=value.int >> 80)
    return start, start + timedelta(milliseconds=1)


# --- rows ------------------------------------------------------------------------------------


def _tokens(codings: Sequence[Any]) -> list[str]:
    """A token's codings as `code`, `system|code`, `system|` (or `|code` with no system): an
    array `&&` the searched value matches exactly when R4's token search would."""
    found: list[str] = []
    for coding in codings:
        if not isinstance(coding, dict):
            continue
        system, code = coding.get("system"), coding.get("code")
        if code is not None:
            found.append(str(code))
            found.append(f"{system}|{code}" if system is not None else f"|{code}")
        if system is not None:
            found.append(f"{system}|")
    return list(dict.fromkeys(found))


def _instant(text: Any, fallback: datetime) -> datetime:
    if isinstance(text, str):
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return fallback
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return fallback


def row_of(
    event: dict[str, Any],
    content: str,
    id: str,
    last_updated: datetime,
    compartments: Sequence[str],
) -> tuple[Any, ...]:
    """The row of an AuditEvent (its JSON as `event` and as stored text `content`), in COLUMNS
    order, its arrays as `text[]` literals. The references are those the R4 search parameters
    select: `agent` is AuditEvent.agent.who, `entity` AuditEvent.entity.what, `patient` both where
    they are Patients."""
    agents = [
        a["who"]["reference"]
        for a in event.get("agent", ())
        if isinstance(a, dict)
        and isinstance(a.get("who"), dict)
        and isinstance(a["who"].get("reference"), str)
    ]
    entities = [
        e["what"]["reference"]
        for e in event.get("entity", ())
        if isinstance(e, dict)
        and isinstance(e.get("what"), dict)
        and isinstance(e["what"].get("reference"), str)
    ]
    patients = [r for r in (*agents, *entities) if r.startswith("Patient/")]
    policies = [
        p
        for a in event.get("agent", ())
        if isinstance(a, dict)
        for p in a.get("policy", ())
        if isinstance(p, str)
    ]
    kind = event.get("type")
    meta = event.get("meta") or {}
    return (
        id,
        _instant(event.get("recorded"), last_updated),
        last_updated,
        content,
        text_array(compartments),
        text_array(dict.fromkeys(patients)),
        text_array(dict.fromkeys(agents)),
        text_array(dict.fromkeys(entities)),
        text_array(_tokens([kind] if isinstance(kind, dict) else [])),
        text_array(_tokens(event.get("subtype", ()))),
        event.get("action"),
        event.get("outcome"),
        text_array(dict.fromkeys(policies)),
        text_array(_tokens(meta.get("tag", ()) if isinstance(meta, dict) else ())),
    )


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An AuditEvent about to be stored: what repository.NewVersion carries of it."""

    id: str
    last_updated: datetime
    content: str
    compartments: Sequence[str]


def _row(event: NewEvent) -> tuple[Any, ...]:
    return row_of(
        orjson.loads(event.content), event.content, event.id, event.last_updated, event.compartments
    )


async def copy_events(conn: Connection, events: Sequence[NewEvent]) -> None:
    """Store many AuditEvents with one COPY (PostgreSQL routes each row to its partition)."""
    await copy_event_rows(conn, [_row(e) for e in events])


async def copy_event_rows(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """`copy_events` of rows made already (`row_of`)."""
    await copy_rows(conn, TABLE, COLUMNS, rows)


# the row's JSON is text, and its arrays `text[]` literals (`row_of`)
_CASTS = {
    "content": "%s::jsonb",
    **{c.name: "%s::text[]" for c in audit_events.columns if isinstance(c.type, ARRAY)},
}
_INSERT = (
    f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES "
    f"({', '.join(_CASTS.get(c, '%s') for c in COLUMNS)})"
    " ON CONFLICT DO NOTHING RETURNING id"
)


async def insert_event(conn: Connection, event: NewEvent) -> bool:
    """Store one AuditEvent; False when its id (and time) is stored already."""
    cursor = await conn.execute(_INSERT, _row(event))
    return await cursor.fetchone() is not None


async def stored_ids(
    conn: Connection, ids: Sequence[str], recorded: Sequence[datetime] = ()
) -> set[str]:
    """Which of `ids` are stored. Given the events' `recorded` times, only their partitions are
    read; else the partitions their ids name, then every partition for the ids not found there."""
    if not ids:
        return set()
    if recorded:
        cursor = await conn.execute(
            f"SELECT id FROM {TABLE} WHERE id = ANY(%s) AND recorded >= %s AND recorded <= %s",
            (list(ids), min(recorded), max(recorded)),
        )
        return {id for (id,) in await cursor.fetchall()}
    found: set[str] = set()
    windows = [w for w in map(window_of, ids) if w is not None]
    if windows:
        cursor = await conn.execute(
            f"SELECT id FROM {TABLE} WHERE id = ANY(%s) AND recorded >= %s AND recorded < %s",
            (list(ids), min(w[0] for w in windows), max(w[1] for w in windows)),
        )
        found = {id for (id,) in await cursor.fetchall()}
    rest = [i for i in ids if i not in found]
    if rest:
        cursor = await conn.execute(f"SELECT id FROM {TABLE} WHERE id = ANY(%s)", (rest,))
        found |= {id for (id,) in await cursor.fetchall()}
    return found


async def read_event(
    conn: Connection, id: str, grants: Grants
) -> tuple[datetime, str, list[str]] | None:
    """(last_updated, content, compartments) of the AuditEvent `id` if `grants` let the caller
    see it. The partition the id names first; every partition only if that misses (ids of
    another form)."""
    window = window_of(id)
    if window is not None:
        row = await fetch_one(conn, audit_read_statement(id, grants, window))
        if row is not None:
            return row[0], row[1], row[2]
    row = await fetch_one(conn, audit_read_statement(id, grants))
    return None if row is None else (row[0], row[1], row[2])


def prefixed(query: Query, prefix: str, params: dict[str, Any]) -> Query:
    """`query` run beside a scalar of its own (`prefix`, an SQL expression with `params`): a
    row always comes, its last columns null when the query finds nothing."""
    return Query(
        f"SELECT {prefix}, r.* FROM (SELECT) one LEFT JOIN LATERAL ({query.sql}) r ON true",
        {**query.params, **params},
    )


_LOCK_COLUMNS = "compartments, last_updated, content::text"


async def lock_event(conn: Connection, id: str) -> tuple[list[str], datetime, str] | None:
    """(compartments, last_updated, content) of the AuditEvent `id`, whoever may see it."""
    window = window_of(id)
    if window is not None:
        cursor = await conn.execute(
            f"SELECT {_LOCK_COLUMNS} FROM {TABLE}"
            " WHERE id = %s AND recorded >= %s AND recorded < %s",
            (id, *window),
        )
        row = await cursor.fetchone()
        if row is not None:
            return row[0], row[1], row[2]
    cursor = await conn.execute(f"SELECT {_LOCK_COLUMNS} FROM {TABLE} WHERE id = %s", (id,))
    row = await cursor.fetchone()
    return None if row is None else (row[0], row[1], row[2])


# --- partitions ------------------------------------------------------------------------------


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def next_month(start: datetime) -> datetime:
    return datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)


def partition_name(start: datetime) -> str:
    return f"{TABLE}_{start.year:04d}_{start.month:02d}"


def parse_month(text: str) -> datetime:
    """`YYYY-MM` as the first instant of that month (UTC); ValueError otherwise."""
    found = re.fullmatch(r"(\d{4})-(\d{2})", text)
    if found is None or not 1 <= int(found.group(2)) <= 12:
        raise ValueError(f"`{text}` is not a month (YYYY-MM)")
    return datetime(int(found.group(1)), int(found.group(2)), 1, tzinfo=UTC)


async def partitions(conn: Connection) -> list[tuple[str, datetime]]:
    """The monthly partitions, oldest first: (name, first instant of the month)."""
    cursor = await conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = %s::regclass",
        (TABLE,),
    )
    rows = await cursor.fetchall()
    found = []
    for (name,) in rows:
        match = _PARTITION_NAME.match(name)
        if match is not None:
            found.append((name, datetime(int(match[1]), int(match[2]), 1, tzinfo=UTC)))
    return sorted(found, key=lambda p: p[1])


async def create_partition(conn: Connection, start: datetime) -> bool:
    """The partition of the month starting at `start`, made if missing (in the caller's
    transaction, which should hold the partition lock): the events of that month that waited in
    the DEFAULT partition move into it. True when it was made."""
    name = partition_name(start)
    end = next_month(start)
    cursor = await conn.execute("SELECT to_regclass(%s)", (name,))
    exists = await cursor.fetchone()
    if exists is not None and exists[0] is not None:
        return False
    await conn.execute(
        f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )
    bounds = {"low": start, "high": end}
    # rows of that month in the DEFAULT partition would make the ATTACH fail: moved first
    await conn.execute(
        f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION}"
        " WHERE recorded >= %(low)s AND recorded < %(high)s RETURNING *)"
        f" INSERT INTO {name} SELECT * FROM moved",
        bounds,
    )
    await conn.execute(
        f"ALTER TABLE {TABLE} ATTACH PARTITION {name}"
        f" FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    )
    return True


async def lock_partitions(conn: Connection) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PARTITION_LOCK,))


async def ensure_partitions(
    conn: Connection, now: datetime, months: int = MONTHS_AHEAD
) -> list[str]:
    """The partitions of the current month and the `months` after it, made where missing, in
    one transaction. The names of those made."""
    made = []
    async with conn.transaction():
        await lock_partitions(conn)
        start = month_start(now)
        for _ in range(months + 1):
            if await create_partition(conn, start):
                made.append(partition_name(start))
            start = next_month(start)
    return made


# --- archive ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Archived:
    partition: str
    month: str  # YYYY-MM
    path: Path
    events: int
    sha256: str


def archive_path(directory: Path, start: datetime) -> Path:
    return directory / f"audit-events-{start.year:04d}-{start.month:02d}.ndjson.gz"


async def months_before(conn: Connection, before: datetime) -> list[tuple[str, datetime]]:
    """The monthly partitions of months that end on or before `before`, oldest first."""
    return [(n, s) for n, s in await partitions(conn) if next_month(s) <= before]


async def archive_month(conn: Connection, name: str, start: datetime, directory: Path) -> Archived:
    """Write the partition `name` (the month starting at `start`) to `directory` as gzip NDJSON
    (one AuditEvent per line, in id order) with a `.sha256` file beside it; fsync both and the
    directory, read the file back and check it holds every event of the partition; only then
    DETACH and DROP the partition, in one transaction that also holds the partition lock. Any
    failure before the DROP leaves the partition as it was (and at worst a file to write again)."""
    path = archive_path(directory, start)
    partial = path.with_name(path.name + ".partial")
    digest = hashlib.sha256()
    count = 0
    async with conn.transaction():
        await lock_partitions(conn)
        # nothing is written to a past month while this runs (the lock is held until the drop)
        await conn.execute(f"LOCK TABLE {name} IN SHARE MODE")
        with partial.open("wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                cursor = conn.cursor(name="audit_archive")
                await cursor.execute(f"SELECT id, content::text FROM {name} ORDER BY id")
                async for _, content in cursor:
                    line = content.encode() + b"\n"
                    gz.write(line)
                    count += 1
                await cursor.close()
            raw.flush()
            os.fsync(raw.fileno())
        data = partial.read_bytes()
        digest.update(data)
        # read back: every line an AuditEvent, as many as the partition holds
        lines = gzip.decompress(data).splitlines()
        if len(lines) != count or any(
            orjson.loads(line).get("resourceType") != "AuditEvent" for line in lines
        ):
            raise OSError(f"the archive `{partial}` does not read back as written")
        row = await (await conn.execute(f"SELECT count(*) FROM {name}")).fetchone()
        if row is None or int(row[0]) != count:
            raise OSError(f"the archive `{partial}` does not hold every event of `{name}`")
        os.replace(partial, path)
        checksum = path.with_name(path.name + ".sha256")
        with checksum.open("w") as out:
            out.write(f"{digest.hexdigest()}  {path.name}\n")
            out.flush()
            os.fsync(out.fileno())
        directory_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)
        await conn.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {name}")
        await conn.execute(f"DROP TABLE {name}")
    return Archived(name, f"{start.year:04d}-{start.month:02d}", path, count, digest.hexdigest())
