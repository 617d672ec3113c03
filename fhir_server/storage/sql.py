"""SQLAlchemy Core statements, run on psycopg 3 connections.

Statements are built with SQLAlchemy Core against `tables.py` and compiled to psycopg's SQL; the
request then runs that SQL on a pooled psycopg connection, one round trip per statement. SQLAlchemy's
async execution layer (greenlet hand-offs, result wrapping, pool events) cost more CPU than the whole
rest of a read, so requests do not go through it. Fixed statements are compiled once, at import;
searches are compiled once per shape (`search_sql.py`) and run as a `Query`.

Values go to psycopg as they are: str, int, bool, datetime and lists of str adapt natively. A JSON
value must be sent as text and cast in the statement (`cast(bindparam(..., Text), JSONB)`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, TypeAlias

import orjson
from psycopg import AsyncConnection
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.sql import ClauseElement

Connection: TypeAlias = AsyncConnection[tuple[Any, ...]]
Params: TypeAlias = Mapping[str, Any]

_DIALECT = psycopg_dialect.dialect()  # type: ignore[no-untyped-call]


class Statement:
    """A statement compiled once; its bind parameters are given by name at each execution."""

    __slots__ = ("sql",)

    def __init__(self, statement: ClauseElement | str) -> None:
        self.sql = statement if isinstance(statement, str) else compile_fixed(statement)


class Query:
    """SQL and values of a statement built for one request (a search): planned by PostgreSQL for
    these values each time it runs, never prepared (see `_server_side`). The SQL text may be
    shared by other requests; the values are this request's own."""

    __slots__ = ("params", "sql")

    def __init__(self, sql: str, params: dict[str, Any]) -> None:
        self.sql = sql
        self.params = params


def compile_fixed(statement: ClauseElement) -> str:
    """SQL of a statement whose values are all named bind parameters."""
    return str(statement.compile(dialect=_DIALECT))


def compile_named(statement: ClauseElement) -> tuple[str, frozenset[str]]:
    """SQL of a statement whose values are all named bind parameters, and the names it uses."""
    compiled = statement.compile(dialect=_DIALECT)
    return str(compiled), frozenset(compiled.params)


def compile_query(statement: ClauseElement) -> tuple[str, dict[str, Any]]:
    """SQL and bound values of a statement built for one request."""
    compiled = statement.compile(dialect=_DIALECT, compile_kwargs={"render_postcompile": True})
    return str(compiled), dict(compiled.params)


def text_array(values: Iterable[str]) -> str:
    """A PostgreSQL `text[]` literal of `values` in their order, each quoted: psycopg sends a
    string for less than a list (its list dumper is Python, element by element), and the
    statement casts it, or COPY parses it with the column's type."""
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "{" + ",".join(quoted) + "}"


async def fetch_all(
    conn: Connection, statement: Statement | Query | ClauseElement, params: Params | None = None
) -> list[tuple[Any, ...]]:
    sql, bound = _prepare(statement, params)
    cursor = await conn.execute(sql, bound, prepare=_server_side(statement))
    return await cursor.fetchall()


STREAM_CHUNK = 10
"""Rows `stream` holds at a time (libpq's chunked mode): a bound on memory with rows of
megabytes, at about the CPU cost of reading a result whole."""


async def stream(
    conn: Connection, statement: Statement | Query | ClauseElement, params: Params | None = None
) -> AsyncIterator[tuple[Any, ...]]:
    """The rows of a statement, `STREAM_CHUNK` at a time: the caller keeps what it needs and
    drops the rest as it goes. Read to the end (leaving early would cancel the statement, which
    aborts an open transaction)."""
    sql, bound = _prepare(statement, params)
    async for row in conn.cursor().stream(sql, bound, size=STREAM_CHUNK):
        yield row


async def fetch_one(
    conn: Connection, statement: Statement | Query | ClauseElement, params: Params | None = None
) -> tuple[Any, ...] | None:
    sql, bound = _prepare(statement, params)
    cursor = await conn.execute(sql, bound, prepare=_server_side(statement))
    return await cursor.fetchone()


async def estimated_count(conn: Connection, count: Query) -> int:
    """The planner's estimate of the rows a count statement (`search_sql.count_statement`)
    counts: EXPLAIN, nothing runs; cheap, and R4's `_total=estimate`."""
    # planned for its values, as the search itself would be (`_server_side`)
    cursor = await conn.execute(f"EXPLAIN (FORMAT JSON) {count.sql}", count.params, prepare=False)
    plan = await cursor.fetchone()
    assert plan is not None
    document = plan[0] if not isinstance(plan[0], str) else orjson.loads(plan[0])
    node = document[0]["Plan"]
    # the count's input is the node under the Aggregate
    plans = node.get("Plans") or [node]
    return int(plans[0].get("Plan Rows", 0))


def _server_side(statement: Statement | Query | ClauseElement) -> bool | None:
    """Fixed statements may be prepared on the server (psycopg does it after a few runs: no
    planning per request). Statements built for one request (searches, a `Query`) are always
    planned for their values: a prepared search drifts to PostgreSQL's generic plan, which cannot
    tell a rare compartment from a common one and at two million rows read thousands of rows
    instead of twenty (a RelatedPerson's search went from 1 to 23 ms of PostgreSQL CPU). Their
    values still go as parameters: an unnamed statement is planned with the values it is bound to,
    so a search's SQL text can be the same for every request of its shape."""
    return None if isinstance(statement, Statement) else False


async def execute(conn: Connection, statement: Statement, params: Params) -> int:
    """Run a statement; the number of rows it affected."""
    cursor = await conn.execute(statement.sql, params)
    return cursor.rowcount


async def execute_many(conn: Connection, statement: Statement, params: Sequence[Params]) -> None:
    """Run a statement for each set of values, pipelined in one round trip."""
    async with conn.cursor() as cursor:
        await cursor.executemany(statement.sql, params)


def _prepare(
    statement: Statement | Query | ClauseElement, params: Params | None
) -> tuple[str, Mapping[str, Any]]:
    if isinstance(statement, Statement):
        return statement.sql, params or {}
    if isinstance(statement, Query):
        return statement.sql, {**statement.params, **params} if params else statement.params
    sql, bound = compile_query(statement)
    if params:
        bound.update(params)
    return sql, bound


async def copy_rows(
    conn: Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Insert rows with COPY, the fastest way PostgreSQL takes many rows: one stream, each row
    formatted by psycopg's C adapters."""
    if not rows:
        return
    async with conn.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            await copy.write_row(row)
