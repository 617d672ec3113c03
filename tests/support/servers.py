"""Servers for the API tests: the app under uvicorn in a background thread (`LiveServer`), and
real `fhir-server serve` processes (`server_processes`)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import httpx
import uvicorn
from starlette.types import ASGIApp

from fhir_server.app import create_app
from fhir_server.services.context import utc_now
from fhir_server.settings import Settings
from tests.support.pooler import through_pooler
from tests.support.tokens import KEYS_DIR


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LiveServer:
    def __init__(
        self,
        settings: Settings,
        url: str,
        clock: Callable[[], datetime] = utc_now,
        *,
        fixed_base: bool = False,
    ) -> None:
        """`fixed_base`: `FHIR_BASE_URL` is this server's own `/fhir` (the authorization
        server's issuer and audience), rather than derived from each request."""
        self.port = free_port()
        url, pooled = through_pooler(url)
        if pooled:
            settings = replace(settings, db_pooler="transaction")
        if fixed_base:
            settings = replace(settings, base_url=f"http://127.0.0.1:{self.port}/fhir")
        if settings.auth_jwks is None:
            settings = replace(settings, data_dir=KEYS_DIR)
        config = uvicorn.Config(
            create_app(settings, url, clock=clock),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextlib.contextmanager
def serving(app: ASGIApp) -> Iterator[str]:
    """Any ASGI `app` under uvicorn on a free loopback port, in a background thread: its origin."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def server_processes(
    database_url: str, logs: Path, count: int = 1, env: dict[str, str] | None = None
) -> Iterator[list[str]]:
    """`count` real `fhir-server serve` processes on the database (their logs in `logs`): the
    base URLs, once every one is ready."""
    exe = str(Path(sys.executable).parent / "fhir-server")
    database_url, pooled = through_pooler(database_url)
    procs, bases, files = [], [], []
    try:
        for n in range(count):
            port = free_port()
            log = (logs / f"server-{n}.log").open("wb")
            files.append(log)
            settings = {
                **os.environ,
                "POSTGRES_URL": database_url,
                "FHIR_MIGRATE_ON_START": "false",
                "FHIR_DATA_DIR": str(KEYS_DIR),  # the key the tests sign with
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "LOG_LEVEL": os.environ.get("TEST_SERVER_LOG_LEVEL", "warning"),
                "FHIR_DB_POOLER": "transaction" if pooled else "none",
                **(env or {}),
            }
            procs.append(
                subprocess.Popen([exe, "serve"], env=settings, stdout=log, stderr=subprocess.STDOUT)
            )
            bases.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        for n, (base, proc) in enumerate(zip(bases, procs, strict=True)):
            wait_until_ready(base, proc, logs / f"server-{n}.log", deadline)
        yield bases
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(20)
        for log in files:
            log.close()


def wait_until_ready(
    base: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    deadline: float,
    *,
    tail: int = 2000,
    message: str = "the servers did not start",
) -> None:
    """Wait until the server `proc` at `base` answers `/readyz`; fail with the end of its `log`
    if it exits, or with `message` once `time.monotonic()` passes `deadline`."""
    while True:
        assert proc.poll() is None, log.read_text()[-tail:]
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, message
        time.sleep(0.2)
