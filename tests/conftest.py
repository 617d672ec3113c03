"""Shared fixtures: a real PostgreSQL (embedded, or FHIR_TEST_POSTGRES_URL) and a real HTTP server.

Each test session gets a fresh database, migrated to head. The API tests talk HTTP to uvicorn
serving the app on a free loopback port in a background thread. The helpers these fixtures are
built on (tokens, servers, databases, resource builders, the access world) live in tests/support/,
and test modules import them from there.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from fhir_server.settings import Settings
from fhir_server.storage.database import migrate
from tests.support import browser as browsers
from tests.support import pooler
from tests.support import world as worlds
from tests.support.databases import drop_database, fresh_database
from tests.support.servers import LiveServer
from tests.support.tokens import auth
from tests.support.world import World


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
def pgbouncer(admin_url: str) -> Iterator[None]:
    """With `FHIR_TEST_POOLER=1`, a PgBouncer in transaction mode in front of the test server
    for the whole session: the servers the tests start reach their database through it
    (tests/support/pooler.py)."""
    if not pooler.wanted():
        yield
        return
    pooler.ACTIVE = pooler.start(admin_url)
    try:
        yield
    finally:
        pooler.stop(pooler.ACTIVE)
        pooler.ACTIVE = None


@pytest.fixture(scope="session")
def database_url(admin_url: str, pgbouncer: None) -> Iterator[str]:
    """A fresh database, migrated to head, dropped at the end of the session."""
    name, url = fresh_database(admin_url)
    migrate(url)
    yield url
    drop_database(admin_url, name)


@pytest.fixture
def empty_database(admin_url: str) -> Iterator[str]:
    """A fresh, unmigrated database for one test."""
    name, url = fresh_database(admin_url)
    yield url
    drop_database(admin_url, name)


@pytest.fixture(scope="session")
def live_server(database_url: str) -> Iterator[LiveServer]:
    with LiveServer(Settings(), database_url) as server:
        yield server


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[LiveServer]:
    """A live server for the module whose `FHIR_BASE_URL` is its own `/fhir` (the authorization
    server's issuer and audience): the sign-in, OAuth and account tests' server."""
    with LiveServer(Settings(), database_url, fixed_base=True) as live:
        yield live


@pytest.fixture(scope="module")
def world(make_world: Callable[..., World]) -> World:
    """The family of issue 13 (tests/support/world.py make_family) in a world of the module."""
    made: World = make_world(people=False)
    worlds.make_family(made)
    return made


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{live_server.origin}/fhir", timeout=30, headers=auth()) as c:
        yield c


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A direct connection, to look at what the server stored."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def make_world(live_server: LiveServer) -> Iterator[Callable[..., World]]:
    """`make_world(**spec)`: a world of people, relationships, consents and callers on the live
    server, created by a System client that lives as long as the test module
    (tests/support/world.py says what `spec` may ask for)."""
    with httpx.Client(base_url=f"{live_server.origin}/fhir", timeout=30, headers=auth()) as system:
        yield functools.partial(worlds.make_world, live_server.origin, system)


@pytest.fixture
def fam(make_world: Callable[..., World]) -> World:
    """An empty world for the family workflow's tests, which add their own people."""
    world: World = make_world(people=False, tag_length=8)
    return world


def _browser(size: tuple[int, int]) -> Iterator[WebDriver]:
    reason = browsers.unavailable()
    if reason is not None:
        if browsers.in_ci():
            pytest.fail(f"{reason} (in CI the browser tests must run)", pytrace=False)
        pytest.skip(reason)
    driver = browsers.start(size)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """A headless Chromium WebDriver (1280x900) with a fresh profile, for one test
    (tests/support/browser.py); skipped where no browser is installed, failed in CI."""
    yield from _browser(browsers.DESKTOP)


@pytest.fixture
def phone_browser() -> Iterator[WebDriver]:
    """The same at a phone's size (390x844)."""
    yield from _browser(browsers.PHONE)
