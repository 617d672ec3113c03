"""PgBouncer in transaction mode in front of the test PostgreSQL (`FHIR_TEST_POOLER=1`, as in
`make test-pooled`), so that the storage and API suites run with the server behind a real pooler.

`start()` runs Debian's `pgbouncer` (`scripts/ensure-pgbouncer` installs it) on a free loopback
port with a configuration written for the run: every database of the test server, trust
authentication (as the test servers have), transaction pooling, no prepared statements and the
session limits of `storage/database.py` in its `connect_query` (a pooler's way to give server
sessions settings: a client's startup options are refused). `stop()` ends it.

While one runs (`ACTIVE`), `app_database()` and the test servers reach the database through it
with `FHIR_DB_POOLER=transaction`; the tests' own psycopg connections (`db` fixture, databases
created and dropped) still go to PostgreSQL directly.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from fhir_server.storage.database import SESSION_LIMITS, Database

PGBOUNCER = os.environ.get("FHIR_PGBOUNCER", "/usr/sbin/pgbouncer")


def wanted() -> bool:
    return os.environ.get("FHIR_TEST_POOLER", "").strip().lower() in {"1", "true", "yes"}


@dataclass
class Pooler:
    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    def route(self, url: str) -> str:
        """`url`, reaching the same database through the pooler."""
        return (
            make_url(url)
            .set(host="127.0.0.1", port=self.port, query={})
            .render_as_string(hide_password=False)
        )

    def log(self) -> str:
        path = self.folder / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""


ACTIVE: Pooler | None = None


def through_pooler(url: str) -> tuple[str, bool]:
    """The URL the server should use for `url`, and whether it is a pooler's."""
    return (ACTIVE.route(url), True) if ACTIVE is not None else (url, False)


def app_database(url: str, **kw: Any) -> Database:
    """A `Database` as the server would open it for `url` (through the pooler when one runs)."""
    routed, pooled = through_pooler(url)
    return Database(routed, pooled=pooled, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def config(server_url: str, port: int, folder: Path, connect_query: str | None) -> str:
    """pgbouncer.ini for a pooler on `port` in front of the server of `server_url`."""
    server = make_url(server_url)
    target = (
        f"host={_host(server_url)} port={server.port or 5432} user={server.username or 'postgres'}"
    )
    if connect_query:
        target += f" connect_query='{connect_query}'"
    return "\n".join(
        [
            "[databases]",
            f"* = {target}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {folder / 'users.txt'}",
            "pool_mode = transaction",
            "default_pool_size = 40",
            "max_client_conn = 2000",
            # the fixed-name statement of a pooled server would land on the wrong session
            "server_reset_query =",
            # a line per connection would be most of the log: the suites open thousands
            "log_connections = 0",
            "log_disconnections = 0",
            f"logfile = {folder / 'pgbouncer.log'}",
            f"pidfile = {folder / 'pgbouncer.pid'}",
            "",
        ]
    )


def limits_query(limits: dict[str, str] | None = None) -> str:
    """The `SET`s that give pooled server sessions the server's limits."""
    chosen = dict(SESSION_LIMITS) if limits is None else limits
    return "; ".join(f"SET {name} = ''{value}''" for name, value in chosen.items())


def _run_as(server_url: str) -> str:
    """The system user for pgbouncer: the owner of the server's socket folder (the embedded
    server's, which only its owner may enter), or `postgres` for a server on TCP."""
    host = _host(server_url)
    return Path(host).owner() if host.startswith("/") else "postgres"


def _host(server_url: str) -> str:
    server = make_url(server_url)
    query_host = server.query.get("host")
    return server.host or (query_host if isinstance(query_host, str) else "127.0.0.1")


def start(server_url: str, *, connect_query: str | None = None) -> Pooler:
    """A PgBouncer in front of the PostgreSQL of `server_url`, ready for connections."""
    if not os.access(PGBOUNCER, os.X_OK):
        raise RuntimeError(f"{PGBOUNCER} is missing: `scripts/ensure-pgbouncer` installs it")
    folder = Path(tempfile.mkdtemp(prefix="fhir-pgbouncer-"))
    user = make_url(server_url).username or "postgres"
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    port = _free_port()
    query = limits_query() if connect_query is None else connect_query
    (folder / "pgbouncer.ini").write_text(config(server_url, port, folder, query or None))
    command = [PGBOUNCER, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # pgbouncer will not run as root
        user = _run_as(server_url)
        for path in (folder, *folder.iterdir()):
            shutil.chown(path, user)
        command[1:1] = ["-u", user]
    # pgbouncer also logs to stderr; a pipe nobody reads would fill (64 KB) and then block it,
    # and with it every test's database connection: stderr goes to a file of its own
    with open(folder / "stderr.txt", "wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    pooler = Pooler(port, folder, process)
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            error = (folder / "stderr.txt").read_text(errors="replace")
            raise RuntimeError(f"pgbouncer exited: {error}{pooler.log()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return pooler
        if time.monotonic() > deadline:
            stop(pooler)
            raise RuntimeError(f"pgbouncer did not listen on {port}: {pooler.log()}")
        time.sleep(0.05)


def stop(pooler: Pooler) -> None:
    if pooler.process.poll() is None:
        pooler.process.send_signal(signal.SIGINT)  # pgbouncer's "shut down now"
        try:
            pooler.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pooler.process.kill()
            pooler.process.wait()
    shutil.rmtree(pooler.folder, ignore_errors=True)
