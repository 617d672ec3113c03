"""Connecting to PostgreSQL, and applying the Alembic migrations."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import cache
from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import AsyncConnection, AsyncCursor
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Connection, create_engine, pool
from sqlalchemy.engine import make_url

import fhir_server.tracing as tracing
from fhir_server.storage import sql

log = logging.getLogger(__name__)


def sqlalchemy_url(url: str) -> str:
    """`postgres://` and `postgresql://` URLs as SQLAlchemy's psycopg 3 dialect wants them."""
    parsed = make_url(url)
    if parsed.drivername in {"postgres", "postgresql", "postgresql+psycopg"}:
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ValueError(
        f"`POSTGRES_URL` must be a postgresql:// URL, got driver `{parsed.drivername}`"
    )


def libpq_url(url: str) -> str:
    """The URL as libpq (psycopg) takes it: without SQLAlchemy's `+driver` suffix."""
    parsed = make_url(sqlalchemy_url(url))
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class TracedCursor(AsyncCursor[Any]):
    """psycopg's cursor, with a span around each statement (used only when tracing is on)."""

    async def execute(self, query: Any, params: Any = None, **kw: Any) -> TracedCursor:
        with tracing.statement_span(str(query)):
            await super().execute(query, params, **kw)
        return self

    async def executemany(self, query: Any, params_seq: Any, **kw: Any) -> None:
        with tracing.statement_span(str(query)):
            await super().executemany(query, params_seq, **kw)


SESSION_LIMITS: Mapping[str, str] = {
    "statement_timeout": "60s",
    "work_mem": "8MB",
    "idle_in_transaction_session_timeout": "60s",
}
"""The defaults of `Settings` (db_statement_timeout, db_work_mem, db_idle_in_transaction_timeout)."""


def session_limits(
    statement_timeout: str, work_mem: str, idle_in_transaction_timeout: str
) -> dict[str, str]:
    return {
        "statement_timeout": statement_timeout,
        "work_mem": work_mem,
        "idle_in_transaction_session_timeout": idle_in_transaction_timeout,
    }


def connect_options(pooled: bool, limits: Mapping[str, str] = SESSION_LIMITS) -> dict[str, Any]:
    """psycopg's connection arguments: the zone and `limits` as startup options, or behind a
    transaction pooler none of them and no prepared statements (see `Database`)."""
    if pooled:
        return {"prepare_threshold": None}
    # values are PostgreSQL time or memory literals (settings.py checks them): no spaces
    options = [Database.OPTIONS, *(f"-c {name}={value}" for name, value in limits.items())]
    return {"options": " ".join(options)}


async def in_utc(conn: AsyncConnection[Any]) -> None:
    """A pooled connection's time zone: a `SET` that the pooler replays on each server session."""
    await conn.execute("SET TIME ZONE 'UTC'")


async def connect(
    url: str, *, pooled: bool, limits: Mapping[str, str] | None = None, **kw: Any
) -> AsyncConnection[Any]:
    """One connection outside a pool, in UTC (and with `limits`) as the pool's are."""
    conn = await AsyncConnection.connect(url, **connect_options(pooled, limits or {}), **kw)
    if pooled:
        await in_utc(conn)
    return conn


async def unlimited(conn: AsyncConnection[Any], limits: Mapping[str, str]) -> dict[str, str]:
    """Each of `limits` that the session of `conn` does not have, with the value it has. Both
    are PostgreSQL's own display of the value (`60s` and `1min` are the same): the wanted one is
    what `set_config(..., is_local)` answers in the same statement that reads the current one,
    in a transaction that is rolled back. One statement, because the wanted value may be one no
    statement could run under (a `statement_timeout` of `1ms`)."""
    differ = {}
    for name, wanted in limits.items():
        async with conn.transaction(force_rollback=True):
            cursor = await conn.execute(
                "SELECT current_setting(%s), set_config(%s, %s, true)",
                (name, name, wanted),
                prepare=False,
            )
            row = await cursor.fetchone()
        if row is not None and row[0] != row[1]:
            differ[name] = str(row[0])
    return differ


class Database:
    """The server's pool of PostgreSQL connections.

    Connections are in autocommit mode, so that a read is one statement and one round trip;
    `transaction()` wraps its statements in BEGIN ... COMMIT, rolled back if the block raises.

    `limits` are PostgreSQL settings of every session (`SESSION_LIMITS` by default): they bound
    what one request can make the database do (docs/configuration.md#database-limits).

    `pooled`: the URL is a pooler in transaction mode (PgBouncer; `FHIR_DB_POOLER=transaction`,
    docs/scaling.md#a-connection-pooler), where one client session's statements run on whichever
    server session is free. Nothing may then rely on session state: no server-side prepared
    statements, no startup `options` (a pooler refuses them); the time zone is set with `SET`,
    which the pooler tracks per client and restores on every server session it hands over; the
    limits are the pooler's or the role's to set (`connect_query`), and `open()` warns when the
    sessions it gets do not have them.
    """

    # Timestamps come back in UTC whatever the server's default zone.
    OPTIONS = "-c TimeZone=UTC"

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        limits: Mapping[str, str] | None = None,
        pooled: bool = False,
    ) -> None:
        self._url = libpq_url(url)
        self.pooled = pooled
        self._limits = dict(SESSION_LIMITS if limits is None else limits)
        self._pool = AsyncConnectionPool(
            self._url,
            min_size=pool_size,
            max_size=pool_size,
            kwargs={
                "autocommit": True,
                **connect_options(pooled, self._limits),
                **({"cursor_factory": TracedCursor} if tracing.enabled() else {}),
            },
            configure=in_utc if pooled else None,
            open=False,
            name="fhir",
        )

    async def open(self) -> None:
        """Connect the pool. A database that refuses a first connection fails at once, with
        PostgreSQL's reason, rather than after the pool's retries."""
        probe = await connect(
            self._url, pooled=self.pooled, limits=self._limits, connect_timeout=10
        )
        try:
            if self.pooled:
                for name, have in (await unlimited(probe, self._limits)).items():
                    log.warning(
                        "behind the pooler, sessions have %s=%s, not the configured %s: set it"
                        " in the pooler's connect_query or with ALTER ROLE (docs/scaling.md)",
                        name,
                        have,
                        self._limits[name],
                    )
        finally:
            await probe.close()
        await self._pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        await self._pool.close()

    def stats(self) -> dict[str, int]:
        """The pool's size and its limit, idle connections and waiting requests, for /metrics."""
        stats = self._pool.get_stats()
        return {
            "max": stats.get("pool_max", 0),
            "size": stats.get("pool_size", 0),
            "available": stats.get("pool_available", 0),
            "requests_waiting": stats.get("requests_waiting", 0),
        }

    def connection(self, wait: float | None = None) -> AbstractAsyncContextManager[sql.Connection]:
        """A connection for reads: each statement sees the data committed when it starts.

        `wait`: seconds to wait for a free connection (the pool's default is 30)."""
        return self._pool.connection(timeout=wait)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[sql.Connection]:
        """A connection inside one transaction: committed when the block ends, else rolled back."""
        async with self._pool.connection() as conn, conn.transaction():
            yield conn


def _alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("migrations")))
    if url is None:
        return config
    # Alembic's config is an ini file underneath: a literal % must be doubled.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Apply the migrations up to `revision`."""
    command.upgrade(_alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(_alembic_config(url), revision)


@cache
def head_revision() -> str | None:
    """The newest migration this code knows."""
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


@cache
def known_revisions() -> frozenset[str]:
    """Every migration this code knows."""
    script = ScriptDirectory.from_config(_alembic_config())
    return frozenset(r.revision for r in script.walk_revisions())


async def schema_revision(conn: sql.Connection) -> str | None:
    """The migration the database is at; None before the first."""
    exists = await (await conn.execute("SELECT to_regclass('alembic_version')")).fetchone()
    if exists is None or exists[0] is None:
        return None
    row = await (await conn.execute("SELECT version_num FROM alembic_version")).fetchone()
    return None if row is None else str(row[0])


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def schema_is_current(url: str) -> bool:
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return current_revision(connection) == head_revision()
    finally:
        engine.dispose()
