"""A throw-away deployment to fuzz: an embedded PostgreSQL and `fhir-server serve` on it, with
its JSON log (at INFO, so every request's route and status are there) in a file."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.run import free_port, spawn, start_database, wait_ready


@dataclass(frozen=True)
class Deployment:
    base: str
    log: Path
    data_dir: Path
    pid: int


def start(stack: ExitStack) -> Deployment:
    tmp, url, _ = start_database(stack)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data_dir = tmp / "data"
    env = {
        "POSTGRES_URL": url,
        "FHIR_MIGRATE_ON_START": "false",
        "FHIR_DATA_DIR": str(data_dir),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "info",
    }
    log = tmp / "server.log"
    handle = stack.enter_context(log.open("wb"))
    group: list[int] = []
    # runs after the server is stopped: a server killed because it would not stop leaves its
    # audit writer process behind (a daemon child survives a SIGKILL of its parent)
    stack.callback(_kill_group, group)
    proc = spawn(stack, [str(Path(sys.executable).parent / "fhir-server"), "serve"], env, handle)
    group.append(proc.pid)
    wait_ready(base, proc, log)
    return Deployment(base, log, data_dir, proc.pid)


def _kill_group(group: list[int]) -> None:
    for pid in group:  # the server's own session (spawn starts one): the server and its children
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
