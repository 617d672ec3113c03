"""No AuditEvent is lost when the server is killed mid-load (issue 15, item 4): every read answered
200 has its AuditEvent stored, counted per resource read, after a SIGKILL of the server process
(its writer process stores the spool and exits) and after a SIGKILL of the whole process group
(server and writer: the next start's writer stores the spool the dead ones left), and after a
crash of PostgreSQL itself just after the writer committed a batch.

Real `fhir-server serve` processes in a session of their own (so that the test can kill their
group), on a fresh database; many threads read until the kill, and count what was answered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from fhir_server.audit import spool
from fhir_server.audit.trail import WRITER_NAME
from fhir_server.storage.database import migrate
from tests.support.databases import drop_database, fresh_database
from tests.support.replica import start_primary
from tests.support.servers import free_port, wait_until_ready
from tests.support.tokens import KEYS_DIR, auth

WAIT = 120  # seconds: generous, the machine is shared; not a speed assertion
READERS = 16
RESOURCES = 40
ANSWERED_BEFORE_KILL = 600  # at least this many reads answered before the kill


@pytest.fixture
def database(admin_url: str) -> Iterator[str]:
    name, url = fresh_database(admin_url)
    migrate(url)
    yield url
    drop_database(admin_url, name)


class Serve:
    """`fhir-server serve` on `url`, leader of a process group of its own (it and its writer)."""

    def __init__(self, url: str, logs: Path, n: int) -> None:
        self.port = free_port()
        self.log = logs / f"server-{n}.log"
        env = {
            **os.environ,
            "POSTGRES_URL": url,
            "FHIR_MIGRATE_ON_START": "false",
            "FHIR_DATA_DIR": str(KEYS_DIR),  # the key the tests sign with
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_LEVEL": "warning",
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "fhir-server"), "serve"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until_ready(self.base, self.proc, self.log, time.monotonic() + WAIT)
        children = psutil.Process(self.proc.pid).children()
        writers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        assert len(writers) == 1, [c.cmdline() for c in children]
        self.writer = writers[0]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(WAIT)


def stored_reads(url: str) -> Counter[str]:
    """The read AuditEvents stored, by the resource read (adapt here if the store moves)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT content->'entity'->0->'what'->>'reference', count(*) FROM audit_events"
            " WHERE content->'subtype'->0->>'code' = 'read'"
            " GROUP BY 1"
        ).fetchall()
    return Counter(dict(rows))


def load_until(base: str, resources: list[str], act: Callable[[], None]) -> Counter[str]:
    """Reads from `READERS` threads until at least `ANSWERED_BEFORE_KILL` are answered, then
    `act()` (a kill) while they go on; the readers stop once `act` has returned, or at the
    connection error of a killed server. The 200s received, by resource, with all readers done."""
    answered: Counter[str] = Counter()
    lock = threading.Lock()
    acting, done = threading.Event(), threading.Event()

    def reader(n: int) -> None:
        with httpx.Client(base_url=f"{base}/fhir", timeout=30, headers=auth()) as client:
            i = n
            while not done.is_set():
                resource = resources[i % len(resources)]
                i += READERS
                try:
                    status = client.get(f"/{resource}").status_code
                except httpx.HTTPError:
                    if acting.is_set():
                        return
                    raise
                if status == 200:
                    with lock:
                        answered[resource] += 1

    threads = [threading.Thread(target=reader, args=(n,), daemon=True) for n in range(READERS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + WAIT
    while sum(answered.values()) < ANSWERED_BEFORE_KILL:
        assert time.monotonic() < deadline, "the load did not get going"
        assert all(t.is_alive() for t in threads), "a reader failed before the kill"
        time.sleep(0.01)
    acting.set()
    try:
        act()
    finally:
        done.set()
    for thread in threads:
        thread.join(WAIT)
    assert not any(t.is_alive() for t in threads), "a reader did not stop"
    return Counter(answered)


def observations(base: str, n: int) -> list[str]:
    """A Patient and `n` Observations of it, created as System: their references."""
    with httpx.Client(base_url=f"{base}/fhir", headers=auth(), timeout=30) as system:
        patient = system.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        created = []
        for k in range(n):
            observation = {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": f"kill {k}"},
                "subject": {"reference": f"Patient/{patient}"},
            }
            created.append(
                f"Observation/{system.post('/Observation', json=observation).json()['id']}"
            )
    return created


def all_stored(url: str, answered: Counter[str]) -> None:
    """Every 200 in `answered` has its read AuditEvent stored, within `WAIT`."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            stored = stored_reads(url)
        except psycopg.OperationalError:  # a database still recovering
            stored = Counter()
        missing = answered - stored
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, (
        f"{sum(missing.values())} of {sum(answered.values())} answered reads have no"
        f" AuditEvent ({sum(stored.values())} stored)"
    )
    # stored at least once for each 200; a request answered but cut off before the client
    # read it may have one too, so `>=`; never stored twice (ids are unique)
    assert sum(stored.values()) >= sum(answered.values())


def run(url: str, tmp_path: Path, group: bool) -> None:
    first = Serve(url, tmp_path, 0)
    restarted: Serve | None = None
    try:
        resources = observations(first.base, RESOURCES)
        assert not stored_reads(url), "no read yet"

        def kill() -> None:
            if group:
                os.killpg(first.proc.pid, signal.SIGKILL)  # the server and its writer
            else:
                os.kill(first.proc.pid, signal.SIGKILL)  # the server (uvicorn) process only
            first.proc.wait(WAIT)

        # the answers are all in: the server is dead, no more can come
        answered = load_until(first.base, resources, kill)
        assert sum(answered.values()) >= ANSWERED_BEFORE_KILL
        if group:
            first.writer.wait(WAIT)
            assert not first.writer.is_running(), "the writer died with its group"
            folder = spool.directory(KEYS_DIR, url)
            left = list(folder.glob(f"*{spool.SUFFIX}"))
            assert left, "the dead server left its spool"
            # the next start's writer stores what the dead ones left
            restarted = Serve(url, tmp_path, 1)
        else:
            # the writer outlives the server: it stores the spool, then exits
            first.writer.wait(WAIT)
        all_stored(url, answered)
        if restarted is not None:
            restarted.stop()
            assert not list(spool.directory(KEYS_DIR, url).glob(f"*{spool.SUFFIX}"))
    finally:
        for server in (first, restarted):
            if server is not None:
                server.stop()


def test_killing_the_server_loses_no_audit_event(database: str, tmp_path: Path) -> None:
    run(database, tmp_path, group=False)


def test_killing_the_server_and_its_writer_loses_no_audit_event(
    database: str, tmp_path: Path
) -> None:
    run(database, tmp_path, group=True)


def test_a_postgresql_crash_loses_no_audit_event(tmp_path: Path) -> None:
    """PostgreSQL crashes (all its processes quit at once) just after the writer committed a
    batch: the writer's commits wait for their WAL flush before the spool's offset moves past
    them, so the crash undoes none that the writer took as stored, and what it had not stored
    yet it stores once PostgreSQL is back."""
    database = start_primary()
    url = database.url("fhir")
    try:
        migrate(url)
        server = Serve(url, tmp_path, 0)
        try:
            resources = observations(server.base, RESOURCES)

            def crash() -> None:
                # at the moment a batch of the writer's has just committed
                with psycopg.connect(url, autocommit=True) as conn:
                    count = "SELECT count(*) FROM audit_events"
                    (before,) = conn.execute(count).fetchone() or (0,)
                    deadline = time.monotonic() + WAIT
                    while (conn.execute(count).fetchone() or (0,))[0] == before:
                        assert time.monotonic() < deadline, "the writer stored nothing"
                        time.sleep(0.002)
                database.crash()

            answered = load_until(server.base, resources, crash)
            assert sum(answered.values()) >= ANSWERED_BEFORE_KILL
            database.start()
            all_stored(url, answered)
            with psycopg.connect(url) as conn:
                # the writer's backend is named, for operators (and bench/replica.py's CPU split)
                named = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    (WRITER_NAME,),
                ).fetchone()
            assert named == (1,)
        finally:
            server.stop()
    finally:
        database.remove()
