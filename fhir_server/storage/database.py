"""Connecting to PostgreSQL, and applying the Alembic migrations."""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, pool
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def sqlalchemy_url(url: str) -> str:
    """`postgres://` and `postgresql://` URLs as SQLAlchemy's psycopg 3 dialect wants them."""
    parsed = make_url(url)
    if parsed.drivername in {"postgres", "postgresql", "postgresql+psycopg"}:
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ValueError(
        f"`POSTGRES_URL` must be a postgresql:// URL, got driver `{parsed.drivername}`"
    )


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def create_engine_async(url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        # Timestamps come back in UTC whatever the server's default zone.
        connect_args={"options": "-c TimeZone=UTC"},
    )


def _alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("migrations")))
    # Alembic's config is an ini file underneath: a literal % must be doubled.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Apply the migrations up to `revision`."""
    command.upgrade(_alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(_alembic_config(url), revision)


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(_alembic_config(url)).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def schema_is_current(url: str) -> bool:
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return current_revision(connection) == head_revision(url)
    finally:
        engine.dispose()
