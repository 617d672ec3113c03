"""Every way of stopping `fhir-server serve` with the embedded PostgreSQL stops the database too
(SIGINT from Ctrl-C, SIGTERM from `kill`, systemd, Kubernetes and process managers, SIGHUP from a
closed terminal); after a SIGKILL, which no process can clean up after, the next start takes the
leftover database over, or restarts it cleanly after a dead one (docs/operations.md#stopping).

Real `fhir-server serve` processes, with no `POSTGRES_URL` and a temporary `FHIR_DATA_DIR`; the
database's pid comes from its `postmaster.pid`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from tests.support.servers import free_port, wait_until_ready

WAIT = 60  # seconds: generous, the machine is shared; not a speed assertion
_started: list[subprocess.Popen[bytes]] = []


class Serve:
    """One `fhir-server serve` on the embedded PostgreSQL in `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "POSTGRES_URL"}
        env.update(
            FHIR_DATA_DIR=str(data_dir),
            HOST="127.0.0.1",
            PORT=str(self.port),
            LOG_LEVEL="info",
        )
        self.log = data_dir / f"serve-{self.port}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "fhir-server"), "serve"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _started.append(self.proc)
        deadline = time.monotonic() + WAIT
        wait_until_ready(
            self.base, self.proc, self.log, deadline, tail=3000, message="the server did not start"
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, signum: int) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(WAIT)


def postmaster(data_dir: Path) -> int | None:
    """The pid in the embedded database's `postmaster.pid`, if the file is there."""
    try:
        return int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])
    except FileNotFoundError:
        return None


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone(pid: int) -> bool:
    deadline = time.monotonic() + WAIT
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    # whatever a failed test left running
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pid = postmaster(tmp_path)
    if pid is not None and alive(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_stops_the_server_and_the_database(
    data_dir: Path, signum: signal.Signals
) -> None:
    serve = Serve(data_dir)
    pid = postmaster(data_dir)
    assert pid is not None and alive(pid)
    helpers = psutil.Process(serve.proc.pid).children(recursive=True)
    assert serve.stop(signum) == 0, serve.log.read_text()[-3000:]
    assert gone(pid), f"PostgreSQL {pid} still runs after {signum.name}"
    assert postmaster(data_dir) is None  # stopped cleanly: PostgreSQL removed its lock file
    assert f"stopped by {signum.name}" in serve.log.read_text()
    for helper in helpers:  # the audit writer and multiprocessing's resource tracker
        assert gone(helper.pid), helper.cmdline()
    # and it was a graceful stop of the server: the lifespan's shutdown ran
    assert "Application shutdown complete" in serve.log.read_text()


def test_after_sigkill_the_next_start_takes_the_database_over(data_dir: Path) -> None:
    first = Serve(data_dir)
    pid = postmaster(data_dir)
    assert pid is not None
    helpers = psutil.Process(first.proc.pid).children(recursive=True)
    assert any("fhir" not in " ".join(h.cmdline()) for h in helpers)  # the audit writer, ...
    first.stop(signal.SIGKILL)
    assert alive(pid)  # what SIGKILL leaves: a database with a dead user listed as its handle
    # the server's helper processes notice that it is gone and leave (none stays an orphan)
    for helper in helpers:
        assert gone(helper.pid), helper.cmdline()
    second = Serve(data_dir)
    assert postmaster(data_dir) == pid  # taken over, not a second server on the same data
    assert httpx.get(f"{second.base}/fhir/metadata", timeout=10).status_code == 200
    # the dead first process no longer counts as a user, so this stop stops the database
    assert second.stop(signal.SIGTERM) == 0
    assert gone(pid)
    assert postmaster(data_dir) is None
    # and a Ctrl-C of a later start stops both too (the stale handle kept it running before)
    third = Serve(data_dir)
    again = postmaster(data_dir)
    assert again is not None and again != pid
    assert third.stop(signal.SIGINT) == 0
    assert gone(again)


def test_after_sigkill_of_both_the_next_start_restarts_the_database(data_dir: Path) -> None:
    first = Serve(data_dir)
    pid = postmaster(data_dir)
    assert pid is not None
    first.stop(signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)
    assert gone(pid)
    time.sleep(1)  # the backends notice their postmaster's death and leave
    # the worst case of a dead postmaster's lock file: its pid is another live process now
    # (pids are reused; in a container after a restart, always)
    lock = data_dir / "pg" / "postmaster.pid"
    lines = lock.read_text().splitlines()
    impostor = subprocess.Popen(["sleep", "120"])
    try:
        lock.write_text("\n".join([str(impostor.pid), *lines[1:]]) + "\n")
        second = Serve(data_dir)
        restarted = postmaster(data_dir)
        assert restarted is not None and restarted not in {pid, impostor.pid}
        created = httpx.post(
            f"{second.base}/fhir/Patient",
            json={"resourceType": "Patient"},
            headers={"Authorization": f"Bearer {dev_token(data_dir)}"},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        assert second.stop(signal.SIGTERM) == 0
        assert gone(restarted)
        assert impostor.poll() is None  # the other process was left alone
    finally:
        impostor.kill()
        impostor.wait()


def dev_token(data_dir: Path) -> str:
    from fhir_server.auth.devkeys import dev_token as sign

    return sign(data_dir, fhir_user=None, scope="system/*.cruds")


def test_the_command_in_process_leaves_the_callers_signals_and_databases_alone(
    admin_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`main()` called in a process with its own embedded database (this test session's) and its
    own signal handlers: it restores the handlers, and stops only a database it started."""
    from fhir_server.cli import main

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    monkeypatch.setenv("POSTGRES_URL", database_url)
    assert main(["migrate"]) == 0
    assert {s: signal.getsignal(s) for s in before} == before
    with psycopg.connect(admin_url) as conn:  # the session's database still serves
        assert conn.execute("SELECT 1").fetchone() == (1,)
