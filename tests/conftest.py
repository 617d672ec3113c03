"""Shared fixtures: a real PostgreSQL (embedded, or FHIR_TEST_POSTGRES_URL) and a real HTTP server.

Each test session gets a fresh database, migrated to head. The API tests talk HTTP to uvicorn
serving the app on a free loopback port in a background thread.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from psycopg import sql
from sqlalchemy.engine import make_url

from fhir_server.app import create_app
from fhir_server.auth.devkeys import dev_token
from fhir_server.settings import Settings
from fhir_server.storage.database import migrate


def _fresh_database(admin_url: str) -> tuple[str, str]:
    name = f"fhir_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    return name, url


def _drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def admin_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PostgreSQL server to create test databases on."""
    external = os.environ.get("FHIR_TEST_POSTGRES_URL")
    if external:
        return external
    from fhir_server import embedded

    data_dir: Path = tmp_path_factory.mktemp("fhir-data")
    return embedded.start(data_dir, database="postgres", delete_on_exit=True)


@pytest.fixture(scope="session")
def database_url(admin_url: str) -> Iterator[str]:
    """A fresh database, migrated to head, dropped at the end of the session."""
    name, url = _fresh_database(admin_url)
    migrate(url)
    yield url
    _drop_database(admin_url, name)


@pytest.fixture
def empty_database(admin_url: str) -> Iterator[str]:
    """A fresh, unmigrated database for one test."""
    name, url = _fresh_database(admin_url)
    yield url
    _drop_database(admin_url, name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# The development signing key every test server trusts (unless a test configures another
# identity provider), and that `token()` signs with: real ES256 tokens, checked by the server.
KEYS_DIR = Path(tempfile.mkdtemp(prefix="fhir-test-keys-"))
atexit.register(shutil.rmtree, KEYS_DIR, ignore_errors=True)


def token(
    fhir_user: str | None = None,
    scope: str = "system/*.cruds",
    *,
    patient: str | None = None,
    lifetime_seconds: int = 3600,
    extra: dict[str, Any] | None = None,
) -> str:
    """A signed access token, by default a System client's with every permission."""
    return dev_token(
        KEYS_DIR,
        fhir_user=fhir_user,
        scope=scope,
        patient=patient,
        lifetime_seconds=lifetime_seconds,
        extra=extra,
    )


def auth(fhir_user: str | None = None, scope: str = "system/*.cruds", **kw: Any) -> dict[str, str]:
    """The Authorization header of `token(...)`."""
    return {"Authorization": f"Bearer {token(fhir_user, scope, **kw)}"}


class LiveServer:
    def __init__(self, settings: Settings, url: str) -> None:
        self.port = _free_port()
        if settings.auth_jwks is None:
            settings = replace(settings, data_dir=KEYS_DIR)
        config = uvicorn.Config(
            create_app(settings, url),
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
def server_processes(
    database_url: str, logs: Path, count: int = 1, env: dict[str, str] | None = None
) -> Iterator[list[str]]:
    """`count` real `fhir-server serve` processes on the database (their logs in `logs`): the
    base URLs, once every one is ready."""
    exe = str(Path(sys.executable).parent / "fhir-server")
    procs, bases, files = [], [], []
    try:
        for n in range(count):
            port = _free_port()
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
                **(env or {}),
            }
            procs.append(
                subprocess.Popen([exe, "serve"], env=settings, stdout=log, stderr=subprocess.STDOUT)
            )
            bases.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        for n, (base, proc) in enumerate(zip(bases, procs, strict=True)):
            while True:
                assert proc.poll() is None, (logs / f"server-{n}.log").read_text()[-2000:]
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the servers did not start"
                time.sleep(0.2)
        yield bases
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(20)
        for log in files:
            log.close()


@pytest.fixture(scope="session")
def live_server(database_url: str) -> Iterator[LiveServer]:
    with LiveServer(Settings(), database_url) as server:
        yield server


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{live_server.origin}/fhir", timeout=30, headers=auth()) as c:
        yield c


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A direct connection, to look at what the server stored."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn
