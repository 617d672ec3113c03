"""Reading and writing resource versions. Every function runs inside the caller's transaction.

Resource content is handed in already serialized (the JSON text of the resource, with `id` and
`meta` set) and handed back as the stored JSON text: reads never round-trip through models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    String,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    false,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql import ClauseElement

from fhir_server.search.grants import UNRESTRICTED, Everything, Grant, Grants
from fhir_server.search.index import IndexRows
from fhir_server.storage import audit_events
from fhir_server.storage.access_facts import WALKED
from fhir_server.storage.search_index import (
    copy_index,
    index_ctes,
    index_key,
    index_params,
)
from fhir_server.storage.search_sql import access_clause, audit_read_statement
from fhir_server.storage.sql import (
    Connection,
    Statement,
    compile_fixed,
    copy_rows,
    execute,
    execute_many,
    fetch_all,
    fetch_one,
    stream,
    text_array,
)
from fhir_server.storage.tables import resource_history, resources


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One version of a resource as stored. `content` is None for a deletion. `compartments`:
    those it was stored in (`NewVersion.compartments`), the values its security predicate
    checks; an AuditEvent of reading it names its patients from them, without parsing
    `content` again (`enforce.patients_of`)."""

    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    content: str | None
    compartments: Sequence[str]
    method: str = ""
    # a `PUT` that brought a deleted resource back (read by history only): with version 1, what
    # makes a version the one that created its resource, whose history entry says `201`
    follows_deletion: bool = False


@dataclass(frozen=True, slots=True)
class NewVersion:
    """A version about to be written."""

    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    content: str | None  # JSON text, None for a deletion
    compartments: Sequence[str]
    method: str
    created_by: str | None = None
    index: IndexRows | None = None  # the search values; None for a deletion (none are kept)

    @property
    def deleted(self) -> bool:
        return self.content is None

    def stored(self) -> StoredVersion:
        """The version as reading it back once written would give it."""
        return StoredVersion(
            self.resource_type,
            self.id,
            self.version_id,
            self.last_updated,
            self.deleted,
            self.content,
            self.compartments,
            self.method,
        )


_current_cols = (
    resources.c.version_id,
    resources.c.last_updated,
    resources.c.deleted,
    cast(resources.c.content, Text).label("content"),
    resources.c.compartments,
)

_read_current = Statement(
    select(*_current_cols).where(
        resources.c.resource_type == bindparam("t"), resources.c.id == bindparam("i")
    )
)
_current_target = select(
    resources.c.version_id,
    resources.c.deleted,
    resources.c.compartments,
    resources.c.created_by,
    resources.c.last_updated,
    cast(resources.c.content, Text).label("content"),
).where(resources.c.resource_type == bindparam("t"), resources.c.id == bindparam("i"))
_lock_current = Statement(_current_target.with_for_update())
_current_target_unlocked = Statement(_current_target)
_read_version_query = select(
    resource_history.c.version_id,
    resource_history.c.last_updated,
    resource_history.c.deleted,
    cast(resource_history.c.content, Text).label("content"),
    resource_history.c.compartments,
    resource_history.c.method,
).where(
    resource_history.c.resource_type == bindparam("t"),
    resource_history.c.id == bindparam("i"),
    resource_history.c.version_id == bindparam("v"),
)
_read_version = Statement(_read_version_query)

_content_param = cast(bindparam("content", type_=Text), JSONB)


# What the current row and the history row of a version share, in this order.
_VERSION_COLUMNS = (
    "resource_type",
    "id",
    "version_id",
    "last_updated",
    "deleted",
    "content",
    "compartments",
    "created_by",
)
_CURRENT_COLUMNS = _VERSION_COLUMNS
_HISTORY_COLUMNS = (*_VERSION_COLUMNS, "method")


# Types whose resources are written once and never changed (the policy denies every update and
# delete): their only version is the current row, and no history row repeats it.
UNVERSIONED = frozenset({"AuditEvent"})
# AuditEvents are rows of their own partitioned table (storage/audit_events.py): the functions
# below that take a resource type hand them there.
AUDIT_EVENT = "AuditEvent"

# Writes that can change the facts of an access decision (storage/access_facts.py loads them): they
# bump, in their own transaction, the access epochs of the nodes of the facts walk they touch, so
# no server keeps using facts they changed, and a write in one family touches no other family's.
FACT_TYPES = frozenset(WALKED)
GLOBAL_EPOCH = "*"  # a key in every user's epoch: bumped by changes to all facts (a reindex)

# INSERT .. ON CONFLICT, in key order (two writers of the same keys lock them in one order)
_BUMP_KEYS = (
    "INSERT INTO access_epochs (key, value) SELECT key, 1 FROM ({keys}) AS bumped (key)"
    " {where} ORDER BY key ON CONFLICT (key) DO UPDATE SET value = access_epochs.value + 1"
)
_bump = Statement(_BUMP_KEYS.format(keys="SELECT unnest(%(keys)s::text[])", where=""))
# The keys a write bumps: the resource's own (`epoch_own`; its content is a fact of whoever reached
# it) and the local targets of the edges of the walk it gains (`epoch_edges` less the edges it had
# before this statement: its old index rows, which every CTE sees as they were). An edge it keeps
# or loses needs no key of its own: the walk reached the resource through it, so the resource's
# own key is in the epoch of every user whose facts the edge was part of.
_WRITE_KEYS = (
    "SELECT unnest(%(epoch_edges)s::text[])"
    " EXCEPT SELECT o.target_type || '/' || o.target_id FROM search_reference o"
    " WHERE o.resource_type = %(resource_type)s AND o.id = %(id)s AND o.code = %(walk)s"
    " UNION SELECT unnest(%(epoch_own)s::text[])"
)
_read_epoch = Statement(
    "SELECT coalesce(sum(value), 0) FROM access_epochs WHERE key = ANY(%(keys)s::text[])"
)


def changes_facts(version: NewVersion) -> bool:
    """Whether the write is of a type the facts statement reads (it may bump access epochs)."""
    return version.resource_type in FACT_TYPES


def epoch_edges(version: NewVersion) -> list[str]:
    """The local targets of the edges of the facts walk that `version` has (its index rows of
    `WALKED`: a reference to another server's resource has no target type, and counts none)."""
    walk = WALKED.get(version.resource_type)
    if walk is None or version.index is None:
        return []
    code, types = walk
    return sorted(
        {
            f"{target_type}/{target_id}"
            for row_code, target_type, target_id, *_ in version.index.reference
            if row_code == code
            and target_type is not None
            and target_id is not None
            and (types is None or target_type in types)
        }
    )


def epoch_own(version: NewVersion) -> list[str]:
    """The written resource's own key: not for a POST, whose new id no facts can have reached."""
    if not changes_facts(version) or version.method == "POST":
        return []
    return [f"{version.resource_type}/{version.id}"]


def _epoch_params(version: NewVersion) -> dict[str, Any]:
    walk = WALKED.get(version.resource_type)
    return {
        "epoch_own": epoch_own(version),
        "epoch_edges": epoch_edges(version),
        "walk": None if walk is None else walk[0],
    }


async def access_epoch(conn: Connection, keys: frozenset[str]) -> int:
    """The epoch of facts read through `keys`: the sum of their counters (they only grow)."""
    row = await fetch_one(conn, _read_epoch, {"keys": array_literal(keys)})
    assert row is not None
    return int(row[0])


_epoch_values = Statement("SELECT key, value FROM access_epochs WHERE key = ANY(%(keys)s::text[])")


async def access_epoch_values(conn: Connection, keys: frozenset[str]) -> dict[str, int]:
    """The counters of `keys` that exist (a missing one counts 0 in an epoch's sum)."""
    rows = await fetch_all(conn, _epoch_values, {"keys": array_literal(keys)})
    return {key: int(value) for key, value in rows}


async def bump_access_epochs(conn: Connection, keys: Sequence[str]) -> None:
    """Bump the counters of `keys` (created at 1 when new)."""
    if keys:
        await execute(conn, _bump, {"keys": sorted(set(keys))})


# The advisory-lock key space of conditional writes ("FHIR"); the second key is the slot.
_CONDITIONAL_LOCKS = 0x46484952


async def lock_conditional_slot(conn: Connection, slot: int) -> None:
    """A transaction-scoped advisory lock on one slot of conditional criteria (released when the
    transaction ends)."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_CONDITIONAL_LOCKS, slot))


_LIVE_PATIENTS_WITH_TOKEN = Statement(
    """
SELECT r.id FROM resources r
WHERE r.resource_type = 'Patient' AND NOT r.deleted AND r.id IN (
    SELECT t.id FROM search_token t
    WHERE t.resource_type = 'Patient' AND t.code = %(code)s AND t.value = %(key)s
      AND coalesce(t.value_full, t.value) = %(value)s)
"""
)


async def live_patients_with_token(conn: Connection, code: str, value: str) -> list[str]:
    """The live Patients whose token `code` (a search parameter: `email`, `phone`) is exactly
    `value`, after an advisory lock on that value: concurrent writers of the same value queue
    until the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"patient-{code}:{value}",))
    key = index_key(value)[0]  # the index holds the start of a long value
    rows = await fetch_all(
        conn, _LIVE_PATIENTS_WITH_TOKEN, {"code": code, "key": key, "value": value}
    )
    return [id for (id,) in rows]


def _with_history(written_row: Any, *, delete_old_index: bool) -> Statement:
    """One statement that writes the current row (`written_row`, an INSERT or UPDATE), the history
    row of that version and the search index: one round trip, atomic without a transaction block,
    the JSON parsed once. It returns the id when the row was written."""
    written = compile_fixed(written_row.returning(*(resources.c[c] for c in _VERSION_COLUMNS)))
    columns = ", ".join(_VERSION_COLUMNS)
    return Statement(
        f"WITH written AS ({written}),\n"
        f"history AS (INSERT INTO {resource_history.name} ({columns}, method)"
        f" SELECT {columns}, %(method)s FROM written WHERE %(versioned)s),\n"
        "epoch AS ("
        + _BUMP_KEYS.format(keys=_WRITE_KEYS, where="WHERE EXISTS (SELECT FROM written)")
        + ")"
        f",\n{index_ctes(delete_old=delete_old_index)}\n"
        "SELECT id FROM written"
    )


# Rows whose id already exists are skipped (and return nothing): callers retry or report it.
_new_row = (
    pg_insert(resources)
    .values(
        resource_type=bindparam("resource_type"),
        id=bindparam("id"),
        version_id=bindparam("version_id"),
        last_updated=bindparam("last_updated"),
        deleted=bindparam("deleted"),
        content=_content_param,
        compartments=bindparam("compartments"),
        created_by=bindparam("created_by"),
    )
    .on_conflict_do_nothing(index_elements=["resource_type", "id"])
)
_insert_new = _with_history(_new_row, delete_old_index=False)
_write_version = _with_history(
    update(resources)
    .where(
        resources.c.resource_type == bindparam("key_type"), resources.c.id == bindparam("key_id")
    )
    .values(
        version_id=bindparam("version_id"),
        last_updated=bindparam("last_updated"),
        deleted=bindparam("deleted"),
        content=_content_param,
        compartments=bindparam("compartments"),
    ),
    delete_old_index=True,
)


def _params(version: NewVersion) -> dict[str, Any]:
    return {
        "resource_type": version.resource_type,
        "id": version.id,
        "version_id": version.version_id,
        "last_updated": version.last_updated,
        "deleted": version.deleted,
        "content": version.content,
        "compartments": list(version.compartments),
        "created_by": version.created_by,
        "method": version.method,
        **_epoch_params(version),
        "versioned": version.resource_type not in UNVERSIONED,
        **index_params(version.index),
    }


# A read restricted to what a caller may see (the common grant: compartments or creators).
_read_granted_query = select(*_current_cols).where(
    resources.c.resource_type == bindparam("t"),
    resources.c.id == bindparam("i"),
    or_(
        resources.c.compartments.overlap(bindparam("c", type_=ARRAY(Text))),
        resources.c.created_by == any_(bindparam("cr", type_=ARRAY(Text))),
    ),
)
_read_granted = Statement(_read_granted_query)


# The same, with the access epoch read in the same statement (one snapshot): a row, or the epoch
# alone when the caller may not see the resource.
_read_granted_epoch = Statement(
    "SELECT (SELECT coalesce(sum(e.value), 0) FROM access_epochs e"
    " WHERE e.key = ANY(%(keys)s::text[])), r.* FROM (SELECT) one LEFT JOIN LATERAL ("
    + compile_fixed(_read_granted_query)
    + ") r ON true"
)


@lru_cache(maxsize=4096)
def array_literal(values: frozenset[str]) -> str:
    """A PostgreSQL `text[]` literal of `values`, sorted (`text_array`): the statement casts it."""
    return text_array(sorted(values))


def _granted(resource_type: str, id: str, grant: Grant) -> dict[str, Any]:
    return {
        "t": resource_type,
        "i": id,
        "c": array_literal(grant.compartments),
        "cr": array_literal(grant.creators),
    }


async def read_granted(
    conn: Connection, resource_type: str, id: str, grant: Grant, epoch_keys: frozenset[str]
) -> tuple[int, StoredVersion | None]:
    """The access epoch of `epoch_keys` and the current version, if `grant` (compartments and
    creators only, no parts) lets the caller see it."""
    if resource_type == AUDIT_EVENT:
        epoch, event = await _audit_event_epoch(conn, id, grant, epoch_keys)
        return epoch, event
    params = {**_granted(resource_type, id, grant), "keys": array_literal(epoch_keys)}
    row = await fetch_one(conn, _read_granted_epoch, params)
    assert row is not None
    epoch, version_id, *stored = row
    found = None if version_id is None else StoredVersion(resource_type, id, version_id, *stored)
    return int(epoch), found


_EPOCH_SQL = (
    "(SELECT coalesce(sum(e.value), 0) FROM access_epochs e WHERE e.key = ANY(%(keys)s::text[]))"
)


async def _audit_event_epoch(
    conn: Connection, id: str, grant: Grant, epoch_keys: frozenset[str]
) -> tuple[int, StoredVersion | None]:
    """`read_granted` of an AuditEvent: the epoch and the event in one statement (one snapshot)
    when the id names its partition; else the epoch, then every partition."""
    grants = {AUDIT_EVENT: grant}
    query = audit_read_statement(id, grants, audit_events.window_of(id))
    row = await fetch_one(
        conn,
        audit_events.prefixed(query, _EPOCH_SQL, {"keys": array_literal(epoch_keys)}),
    )
    assert row is not None
    epoch, last_updated, content, compartments = row
    if content is not None:
        return int(epoch), _stored_event(id, (last_updated, content, compartments))
    if audit_events.window_of(id) is None:
        return int(epoch), None  # that read was of every partition already
    return int(epoch), await _audit_event(conn, id, grants)


async def _audit_event(conn: Connection, id: str, grants: Grants) -> StoredVersion | None:
    found = await audit_events.read_event(conn, id, grants)
    return None if found is None else _stored_event(id, found)


def _stored_event(id: str, found: tuple[datetime, str, Sequence[str]]) -> StoredVersion:
    """An AuditEvent as a stored version: written once, never deleted."""
    last_updated, content, compartments = found
    return StoredVersion(AUDIT_EVENT, id, 1, last_updated, False, content, compartments)


async def read_current(
    conn: Connection, resource_type: str, id: str, grants: Grants | None = None
) -> StoredVersion | None:
    """The current version, or None; with `grants`, None also when the caller may not see it."""
    if resource_type == AUDIT_EVENT:
        if grants is not None and grants[resource_type] is None:
            return None
        return await _audit_event(conn, id, Everything() if grants is None else grants)
    grant = UNRESTRICTED if grants is None else grants[resource_type]
    if grant is None:
        return None
    if grant.unrestricted:
        statement: Statement | ClauseElement = _read_current
        params: dict[str, Any] = {"t": resource_type, "i": id}
    elif grant.within is None and not grant.criteria and not grant.parts:
        statement = _read_granted
        params = _granted(resource_type, id, grant)
    else:
        statement = select(*_current_cols).where(
            resources.c.resource_type == resource_type,
            resources.c.id == id,
            access_clause(Everything() if grants is None else grants, resources, [resource_type]),
        )
        params = {}
    row = await fetch_one(conn, statement, params)
    return None if row is None else StoredVersion(resource_type, id, *row)


async def read_version(
    conn: Connection,
    resource_type: str,
    id: str,
    version_id: int,
    grants: Grants | None = None,
) -> StoredVersion | None:
    """A version, or None; with `grants`, None also when the caller may not see that version."""
    params = {"t": resource_type, "i": id, "v": version_id}
    if grants is None or isinstance(grants, Everything):
        row = await fetch_one(conn, _read_version, params)
    else:
        h = resource_history
        statement = _read_version_query.where(access_clause(grants, h, [resource_type]))
        row = await fetch_one(conn, statement, params)
    return None if row is None else StoredVersion(resource_type, id, *row)


@dataclass(frozen=True, slots=True)
class Locked:
    """The current row of a resource, locked until the transaction ends."""

    version_id: int
    deleted: bool
    compartments: list[str]
    created_by: str | None
    last_updated: datetime
    content: str | None  # JSON text, None for a deletion


async def lock_current(
    conn: Connection, resource_type: str, id: str, *, lock: bool = True
) -> Locked | None:
    """Lock the current row for the rest of the transaction, so concurrent writers queue; it
    comes with its content, which a write compares with or builds on (`lock=False`: read it
    without locking)."""
    if resource_type == AUDIT_EVENT:
        # never changed: nothing to lock (every update and delete is refused by the policy)
        event = await audit_events.lock_event(conn, id)
        return None if event is None else Locked(1, False, event[0], None, event[1], event[2])
    statement = _lock_current if lock else _current_target_unlocked
    row = await fetch_one(conn, statement, {"t": resource_type, "i": id})
    return None if row is None else Locked(*row)


async def insert_new(conn: Connection, version: NewVersion) -> bool:
    """Insert a first version. False when the id already exists (nothing is written), which
    callers turn into a retry or a conflict."""
    if version.resource_type == AUDIT_EVENT:
        assert version.content is not None
        return await audit_events.insert_event(conn, _event(version))
    return await fetch_one(conn, _insert_new, _params(version)) is not None


async def insert_created(conn: Connection, versions: Sequence[NewVersion]) -> None:
    """Insert many first versions whose ids the server has just made up (so no id can exist
    yet), with COPY: the current rows, the history rows, the search index. The caller's
    transaction makes the three one."""
    events = [v for v in versions if v.resource_type == AUDIT_EVENT]
    if events:
        await audit_events.copy_events(conn, [_event(v) for v in events])
        versions = [v for v in versions if v.resource_type != AUDIT_EVENT]
    current = [
        (
            v.resource_type,
            v.id,
            v.version_id,
            v.last_updated,
            False,
            v.content,
            list(v.compartments),
            v.created_by,
        )
        for v in versions
    ]
    await copy_rows(conn, resources.name, _CURRENT_COLUMNS, current)
    history = [
        (*row, v.method)
        for row, v in zip(current, versions, strict=True)
        if v.resource_type not in UNVERSIONED
    ]
    await copy_rows(conn, resource_history.name, _HISTORY_COLUMNS, history)
    await copy_index(conn, [(v.resource_type, v.id, v.index) for v in versions])
    # new resources: no old edges to lose
    await bump_access_epochs(conn, [k for v in versions for k in (*epoch_own(v), *epoch_edges(v))])


def _event(version: NewVersion) -> audit_events.NewEvent:
    assert version.content is not None
    return audit_events.NewEvent(
        version.id, version.last_updated, version.content, version.compartments
    )


async def write_version(conn: Connection, version: NewVersion) -> None:
    """Write a new version of a resource whose current row the caller has locked."""
    params = _params(version)
    await execute(
        conn, _write_version, {**params, "key_type": version.resource_type, "key_id": version.id}
    )


@dataclass(frozen=True, slots=True)
class HistoryCursor:
    """Position in a history listing, newest first: the last entry of the previous page."""

    last_updated: datetime
    resource_type: str
    id: str
    version_id: int


async def history(
    conn: Connection,
    *,
    resource_type: str | None,
    id: str | None,
    since: datetime | None,
    count: int,
    after: HistoryCursor | None,
    grants: Grants | None = None,
    max_bytes: int | None = None,
) -> tuple[list[StoredVersion], bool]:
    """Versions newest first, for one resource, one type, or the whole system; with `grants`,
    only the versions the caller may see. At most `count` of them, and with `max_bytes` fewer
    where their JSON would pass it (at least one); and whether more follow."""
    h = resource_history.c
    previous = resource_history.alias("previous").c
    # one primary-key probe per PUT version of the page, in the same statement (PostgreSQL
    # evaluates it after the LIMIT): whether the version before it was a deletion
    follows_deletion = case(
        (
            and_(h.method == "PUT", h.version_id > 1),
            select(previous.version_id)
            .where(
                previous.resource_type == h.resource_type,
                previous.id == h.id,
                previous.version_id == h.version_id - 1,
                previous.deleted,
            )
            .exists(),
        ),
        else_=false(),
    )
    query = select(
        h.resource_type,
        h.id,
        h.version_id,
        h.last_updated,
        h.deleted,
        cast(h.content, Text).label("content"),
        h.compartments,
        h.method,
        follows_deletion.label("follows_deletion"),
    )
    if resource_type is not None:
        query = query.where(h.resource_type == resource_type)
    if id is not None:
        query = query.where(h.id == id)
    if since is not None:
        query = query.where(h.last_updated >= since)
    if grants is not None:
        query = query.where(
            access_clause(
                grants, resource_history, None if resource_type is None else [resource_type]
            )
        )
    if after is not None:
        # keyset: strictly after the cursor in (last_updated desc, type, id, version desc) order
        query = query.where(
            or_(
                h.last_updated < after.last_updated,
                and_(
                    h.last_updated == after.last_updated,
                    func.row(h.resource_type, h.id, -h.version_id)
                    > func.row(literal(after.resource_type), literal(after.id), -after.version_id),
                ),
            )
        )
    query = query.order_by(h.last_updated.desc(), h.resource_type, h.id, h.version_id.desc()).limit(
        count + 1
    )
    versions: list[StoredVersion] = []
    left = max_bytes
    more = False
    async for row in stream(conn, query):  # rows of megabytes: never the whole page at once
        if more:
            continue  # read to the end, not kept
        size = len(row[5] or "")
        if len(versions) == count or (left is not None and versions and size > left):
            more = True
            continue
        if left is not None:
            left -= size
        versions.append(StoredVersion(*row))
    return versions, more


async def history_total(
    conn: Connection,
    resource_type: str,
    id: str,
    since: datetime | None,
    grants: Grants | None = None,
) -> int:
    h = resource_history.c
    query = select(func.count()).where(h.resource_type == resource_type, h.id == id)
    if grants is not None:
        query = query.where(access_clause(grants, resource_history, [resource_type]))
    if since is not None:
        query = query.where(h.last_updated >= since)
    row = await fetch_one(conn, query)
    assert row is not None
    return int(row[0])


async def exists(conn: Connection, resource_type: str, id: str) -> bool:
    if resource_type == AUDIT_EVENT:
        return bool(await audit_events.stored_ids(conn, [id]))
    query = select(true()).where(resources.c.resource_type == resource_type, resources.c.id == id)
    return await fetch_one(conn, query) is not None


_reindex = Statement(
    "WITH written AS (SELECT CAST(%(resource_type)s AS varchar) AS resource_type,"
    " CAST(%(id)s AS varchar) AS id),\n"
    f"{index_ctes(delete_old=True)}\n"
    "SELECT id FROM written"
)
_current_page = Statement(
    select(resources.c.resource_type, resources.c.id, cast(resources.c.content, Text))
    .where(
        resources.c.deleted.is_(False),
        func.row(resources.c.resource_type, resources.c.id)
        > func.row(bindparam("after_type", type_=String), bindparam("after_id", type_=String)),
    )
    .order_by(resources.c.resource_type, resources.c.id)
    .limit(bindparam("limit"))
)


async def live_resources(
    conn: Connection, after: tuple[str, str], limit: int
) -> list[tuple[str, str, str]]:
    """Live resources in (type, id) order after `after`: the JSON text of each."""
    rows = await fetch_all(
        conn, _current_page, {"after_type": after[0], "after_id": after[1], "limit": limit}
    )
    return [(t, i, c) for t, i, c in rows]


async def replace_index(conn: Connection, entries: Sequence[tuple[str, str, IndexRows]]) -> None:
    """Replace the search index rows of these resources."""
    params = [{"resource_type": t, "id": i, **index_params(rows)} for t, i, rows in entries]
    if params:
        await execute_many(conn, _reindex, params)
        # access facts are found through the reference index: every user's may change
        await bump_access_epochs(conn, [GLOBAL_EPOCH])


_change_events = Statement(
    f"""
SELECT id, content FROM {audit_events.TABLE}
WHERE compartments @> ARRAY[%(ref)s]::text[] AND entities @> ARRAY[%(ref)s]::text[]
  AND content->'entity'->0->'what'->>'reference' = %(ref)s
  AND action IN ('C', 'U', 'D') AND outcome = '0'
  AND (%(recorded)s::text IS NULL
       OR (recorded, id) < (%(recorded)s::timestamptz, %(id)s::varchar))
ORDER BY recorded DESC, id DESC
LIMIT %(n)s
"""
)


async def change_events(
    conn: Connection, reference: str, limit: int, before: tuple[str, str] | None = None
) -> list[dict[str, Any]]:
    """The AuditEvents of the writes made to `reference` ("Patient/1"), newest first: those
    recorded before `before` ((recorded, event id), the last of a previous page) when given."""
    recorded, id = before if before is not None else (None, None)
    rows = await fetch_all(
        conn, _change_events, {"ref": reference, "recorded": recorded, "id": id, "n": limit}
    )
    return [content for _, content in rows]
