"""Connecting to PostgreSQL, and applying the Alembic migrations."""

from __future__ import annotations

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


class Database:
    """The server's pool of PostgreSQL connections.

    Connections are in autocommit mode, so that a read is one statement and one round trip;
    `transaction()` wraps its statements in BEGIN ... COMMIT, rolled back if the block raises.

    `limits` are PostgreSQL settings of every session (`SESSION_LIMITS` by default): they bound
    what one request can make the database do (docs/configuration.md#database-limits).
    """

    # Timestamps come back in UTC whatever the server's default zone.
    OPTIONS = "-c TimeZone=UTC"

    def __init__(
        self, url: str, *, pool_size: int = 10, limits: Mapping[str, str] | None = None
    ) -> None:
        self._url = libpq_url(url)
        settings = SESSION_LIMITS if limits is None else limits
        # values are PostgreSQL time or memory literals (settings.py checks them): no spaces
        self._options = " ".join(
            [self.OPTIONS, *(f"-c {name}={value}" for name, value in settings.items())]
        )
        self._pool = AsyncConnectionPool(
            self._url,
            min_size=pool_size,
            max_size=pool_size,
            kwargs={
                "autocommit": True,
                "options": self._options,
                **({"cursor_factory": TracedCursor} if tracing.enabled() else {}),
            },
            open=False,
            name="fhir",
        )

    async def open(self) -> None:
        """Connect the pool. A database that refuses a first connection fails at once, with
        PostgreSQL's reason, rather than after the pool's retries."""
        probe = await AsyncConnection.connect(self._url, connect_timeout=10, options=self._options)
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
