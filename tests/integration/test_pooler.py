"""The server's database pool behind a real PgBouncer in transaction mode (tests/support/pooler.py):
what breaks there without `FHIR_DB_POOLER=transaction` (prepared statements, startup options),
and what holds with it (UTC on every server session, the limits set by the pooler, a warning when
they are missing, transaction-scoped advisory locks, a server that serves and revokes)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from fhir_server.settings import Settings
from fhir_server.storage import repository
from fhir_server.storage.database import Database
from tests.support import pooler, resources
from tests.support.browser import in_ci
from tests.support.resources import years_ago
from tests.support.servers import LiveServer
from tests.support.tokens import auth

FIXED = "SELECT count(*) FROM pg_class WHERE relname = %s"


@pytest.fixture(scope="module")
def bouncer(admin_url: str) -> Iterator[pooler.Pooler]:
    if not os.access(pooler.PGBOUNCER, os.X_OK):
        message = f"{pooler.PGBOUNCER} missing: scripts/ensure-pgbouncer installs it"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    # the pooler's server sessions default to another zone: only the client's SET makes UTC
    started = pooler.start(
        admin_url, connect_query=pooler.limits_query() + "; SET TimeZone = ''Asia/Tokyo''"
    )
    try:
        yield started
    finally:
        pooler.stop(started)


async def _run_fixed(db: Database, times: int) -> None:
    for _ in range(times):
        async with db.connection() as conn:
            await conn.execute(FIXED, ("resources",))


async def _interleave(conns: list[psycopg.AsyncConnection[Any]]) -> None:
    """A fixed statement on each connection in turn, while another's transaction takes a
    server session between them."""
    for n in range(30):
        await conns[n % 3].execute(FIXED, ("resources",))
        async with conns[(n + 1) % 3].transaction():
            await conns[(n + 1) % 3].execute("SELECT pg_sleep(0.001)")


def test_prepared_statements_break_behind_the_pooler_unless_pooled(
    bouncer: pooler.Pooler, database_url: str
) -> None:
    url = bouncer.route(database_url)

    async def check() -> None:
        # psycopg prepares a statement run often; behind the pooler it lands on another session
        direct = psycopg.AsyncConnection
        conns = [await direct.connect(url, autocommit=True, prepare_threshold=0) for _ in range(3)]
        try:
            with pytest.raises(psycopg.Error):
                await _interleave(conns)
        finally:
            for conn in conns:
                await conn.close()
        pooled = Database(url, pool_size=3, pooled=True)
        await pooled.open()
        try:
            await asyncio.gather(*(_run_fixed(pooled, 30) for _ in range(6)))
        finally:
            await pooled.close()

    asyncio.run(check())


def test_startup_options_are_refused_by_the_pooler(
    bouncer: pooler.Pooler, database_url: str
) -> None:
    async def check() -> None:
        with pytest.raises(psycopg.OperationalError, match="options"):
            await Database(bouncer.route(database_url), pool_size=1).open()

    asyncio.run(check())


def test_every_pooled_statement_runs_in_utc_with_the_limits(
    bouncer: pooler.Pooler, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = bouncer.route(database_url)

    async def check() -> set[tuple[Any, ...]]:
        db = Database(url, pool_size=4, pooled=True)
        await db.open()
        seen: set[tuple[Any, ...]] = set()

        async def look() -> None:
            for _ in range(20):
                async with db.connection() as conn:
                    cursor = await conn.execute(
                        "SELECT current_setting('TimeZone'), current_setting('statement_timeout'),"
                        " pg_backend_pid()"
                    )
                    seen.add(await cursor.fetchone() or ())

        # an unpooled-zone client shares the server sessions meanwhile
        other = await psycopg.AsyncConnection.connect(url, autocommit=True, prepare_threshold=None)
        try:
            await asyncio.gather(look(), look(), other.execute("SELECT pg_sleep(0.05)"))
            cursor = await other.execute("SHOW TimeZone")
            assert await cursor.fetchone() == ("Asia/Tokyo",)
        finally:
            await other.close()
            await db.close()
        return seen

    with caplog.at_level(logging.WARNING, logger="fhir_server.storage.database"):
        seen = asyncio.run(check())
    assert {(zone, timeout) for zone, timeout, _ in seen} == {("UTC", "1min")}
    assert not [r for r in caplog.records if "pooler" in r.getMessage()]


def test_a_pooler_without_the_limits_is_reported(
    admin_url: str, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    if not os.access(pooler.PGBOUNCER, os.X_OK):
        pytest.skip("pgbouncer missing")
    bare = pooler.start(admin_url, connect_query="")
    try:

        async def check() -> None:
            db = Database(bare.route(database_url), pool_size=1, pooled=True)
            await db.open()
            await db.close()

        with caplog.at_level(logging.WARNING, logger="fhir_server.storage.database"):
            asyncio.run(check())
    finally:
        pooler.stop(bare)
    named = " ".join(r.getMessage() for r in caplog.records)
    assert "statement_timeout" in named and "work_mem" in named


def test_a_limit_no_statement_could_run_under_is_reported_not_fatal(
    bouncer: pooler.Pooler, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The check compared the limits by applying each in turn: a `statement_timeout` of `1ms`
    then cancelled the check itself, and the server did not start behind the pooler."""

    async def check() -> None:
        db = Database(
            bouncer.route(database_url),
            pool_size=1,
            pooled=True,
            limits={"statement_timeout": "1ms", "work_mem": "8MB"},
        )
        await db.open()
        try:
            async with db.connection() as conn:
                row = await (await conn.execute("SELECT 1")).fetchone()
                assert row == (1,)
        finally:
            await db.close()

    with caplog.at_level(logging.WARNING, logger="fhir_server.storage.database"):
        asyncio.run(check())
    named = [r.getMessage() for r in caplog.records]
    assert any("statement_timeout=1min" in m and "1ms" in m for m in named), named
    assert not any("work_mem" in m for m in named), named  # the pooler's 8MB is the wanted one


def test_conditional_slots_hold_behind_the_pooler(
    bouncer: pooler.Pooler, database_url: str
) -> None:
    """The advisory lock of conditional writes is transaction-scoped: the second transaction
    waits for the first, on whatever server sessions the pooler gives them."""

    async def check() -> list[str]:
        db = Database(bouncer.route(database_url), pool_size=2, pooled=True)
        await db.open()
        order: list[str] = []

        async def hold() -> None:
            async with db.transaction() as conn:
                await repository.lock_conditional_slot(conn, 4242)
                order.append("first in")
                await asyncio.sleep(0.3)
                order.append("first out")

        async def wait() -> None:
            await asyncio.sleep(0.1)
            async with db.transaction() as conn:
                await repository.lock_conditional_slot(conn, 4242)
                order.append("second in")

        try:
            await asyncio.gather(hold(), wait())
        finally:
            await db.close()
        return order

    assert asyncio.run(check()) == ["first in", "first out", "second in"]


def test_the_server_serves_and_revokes_behind_the_pooler(
    bouncer: pooler.Pooler, database_url: str
) -> None:
    previous, pooler.ACTIVE = pooler.ACTIVE, bouncer
    try:
        server = LiveServer(Settings(), database_url)
    finally:
        pooler.ACTIVE = previous
    with server, httpx.Client(base_url=f"{server.origin}/fhir", headers=auth()) as api:
        child = api.post("/Patient", json=resources.patient("Pooled", born=years_ago(8)))
        assert child.status_code == 201, child.text
        kid = f"Patient/{child.json()['id']}"
        lab = api.post("/Observation", json=resources.observation(kid)).json()["id"]
        parent = api.post("/RelatedPerson", json=resources.related_person(kid, "MTH")).json()
        mother = auth(fhir_user=f"RelatedPerson/{parent['id']}", scope="user/*.rs")
        assert api.get(f"/Observation/{lab}", headers=mother).status_code == 200
        ended = {**parent, "active": False}
        assert api.put(f"/RelatedPerson/{parent['id']}", json=ended).status_code == 200
        assert api.get(f"/Observation/{lab}", headers=mother).status_code in {403, 404}
        found = api.get("/Observation", params={"subject": kid}).json()
        assert [e["resource"]["id"] for e in found["entry"]] == [lab]
    assert "ERROR" not in bouncer.log()


def test_the_pooler_keeps_answering_after_thousands_of_connections(
    bouncer: pooler.Pooler, admin_url: str
) -> None:
    """The first full run of the suites behind the pooler hung: pgbouncer logged a line per
    connection to a stderr pipe nobody read, and once the pipe's 64 KB were full it blocked on
    the write, with every connection through it. A suite opens thousands of connections."""
    url = bouncer.route(admin_url)
    for n in range(1500):
        with psycopg.connect(url, autocommit=True, prepare_threshold=None, connect_timeout=5) as c:
            row = c.execute("SELECT %s::int", (n,)).fetchone()
            assert row == (n,)
    assert bouncer.process.poll() is None
