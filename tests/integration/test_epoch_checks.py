"""The access-epoch checks of replica reads, shared between concurrent reads on the primary
(storage/epoch_checks.py): fewer statements than checks, every answer what a statement of its own
would read, and never the answer of a statement that was already on its way when the check was
asked (it could miss a revocation committed just before). On a real PostgreSQL; a connection
can be held after its statement has run, so that the test decides what is in flight when."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest

from fhir_server.storage.epoch_checks import EpochChecks
from fhir_server.storage.repository import access_epoch, bump_access_epochs

KEYS = frozenset({"Patient/ec-1", "RelatedPerson/ec-2", "*"})


class Held:
    """A real connection whose statements run at once but whose answers wait for `gate`, and
    then fail with `error` if one is set (the connection lost on the way back)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self.gate = asyncio.Event()
        self.sent = asyncio.Event()
        self.error: Exception | None = None

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        cursor = await self.conn.execute(*args, **kwargs)  # run: its snapshot is taken
        self.sent.set()
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return cursor


@asynccontextmanager
async def connections(url: str, n: int) -> AsyncIterator[list[psycopg.AsyncConnection[Any]]]:
    """`n` connections of their own, closed at the end."""
    conns = [await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(n)]
    try:
        yield conns
    finally:
        for conn in conns:
            await conn.close()


async def in_flight(
    checks: EpochChecks, conn: psycopg.AsyncConnection[Any]
) -> tuple[Held, asyncio.Task[int]]:
    """A check whose statement has run on `conn` and whose answer waits for the `Held`'s gate."""
    held = Held(conn)
    task = asyncio.create_task(checks.current(held, KEYS))  # type: ignore[arg-type]
    await held.sent.wait()
    return held, task


async def bump(url: str, keys: frozenset[str]) -> int:
    """Commit a bump of `keys` on a connection of its own: the epoch after it."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        async with conn.transaction():
            await bump_access_epochs(conn, sorted(keys))
        return await access_epoch(conn, keys)


def test_concurrent_checks_share_statements_and_each_gets_its_own_sum(database_url: str) -> None:
    async def main() -> None:
        other = frozenset({"Patient/ec-other", "*"})
        await bump(database_url, KEYS)
        await bump(database_url, other)
        async with connections(database_url, 8) as conns:
            checks = EpochChecks()
            leader, first = await in_flight(checks, conns[0])
            rest = [
                asyncio.create_task(checks.current(c, KEYS if n % 2 else other))
                for n, c in enumerate(conns[1:])
            ]
            await asyncio.sleep(0.05)  # all seven are waiting for the next statement
            assert not any(t.done() for t in rest)
            leader.gate.set()
            answers = await asyncio.gather(first, *rest)
            assert checks.checks == 8
            assert checks.statements == 2  # the leader's, then one for the seven
            want = {KEYS: await access_epoch(conns[1], KEYS)}
            want[other] = await access_epoch(conns[1], other)
            assert want[KEYS] != want[other]
            assert answers == [want[KEYS]] + [want[KEYS if n % 2 else other] for n in range(7)]

    asyncio.run(main())


def test_a_check_asked_after_a_commit_is_not_answered_by_a_statement_already_on_its_way(
    database_url: str,
) -> None:
    """The revocation case: a statement is in flight (its snapshot taken) when a revocation
    commits and a read then asks for its check. That read must see the revocation."""

    async def main() -> None:
        before = await bump(database_url, KEYS)
        async with connections(database_url, 2) as conns:
            checks = EpochChecks()
            leader, early = await in_flight(
                checks, conns[0]
            )  # its statement has run: it cannot see what follows
            after = await bump(database_url, KEYS)  # a revocation commits
            assert after > before
            late = asyncio.create_task(checks.current(conns[1], KEYS))
            await asyncio.sleep(0.05)
            leader.gate.set()
            assert await early == before  # asked before the commit: either answer is right
            assert await late == after  # asked after it: only the new one is
            assert checks.statements == 2

    asyncio.run(main())


def test_a_failed_statement_lets_the_waiting_checks_ask_again(database_url: str) -> None:
    async def main() -> None:
        async with connections(database_url, 3) as conns:
            checks = EpochChecks()
            leader, failing = await in_flight(checks, conns[0])
            waiting = [asyncio.create_task(checks.current(c, KEYS)) for c in conns[1:]]
            await asyncio.sleep(0.05)
            leader.error = psycopg.OperationalError("the connection was lost")
            leader.gate.set()
            answers = await asyncio.gather(*waiting)
            assert answers == [await access_epoch(conns[1], KEYS)] * 2
            # the leader's own check fails as its statement would have alone
            with pytest.raises(psycopg.OperationalError):
                await failing
            assert checks.statements == 2  # the failed one, then one for both waiting

    asyncio.run(main())


def test_a_cancelled_check_does_not_stop_the_others(database_url: str) -> None:
    async def main() -> None:
        async with connections(database_url, 3) as conns:
            checks = EpochChecks()
            leader, first = await in_flight(checks, conns[0])
            gone = asyncio.create_task(checks.current(conns[1], KEYS))  # its request went away
            kept = asyncio.create_task(checks.current(conns[2], KEYS))
            await asyncio.sleep(0.05)
            gone.cancel()
            leader.gate.set()
            epoch = await access_epoch(conns[2], KEYS)
            assert await first == epoch
            assert await kept == epoch
            assert gone.cancelled()

    asyncio.run(main())


def test_the_checks_a_failed_statement_was_to_answer_ask_again(database_url: str) -> None:
    async def main() -> None:
        async with connections(database_url, 3) as conns:
            checks = EpochChecks()
            first, second = Held(conns[0]), Held(conns[1])
            leading = asyncio.create_task(checks.current(first, KEYS))  # type: ignore[arg-type]
            await first.sent.wait()
            # both wait; the first of them sends the next statement, for both
            failing = asyncio.create_task(checks.current(second, KEYS))  # type: ignore[arg-type]
            await asyncio.sleep(0.01)
            answered = asyncio.create_task(checks.current(conns[2], KEYS))
            await asyncio.sleep(0.05)
            first.gate.set()
            await second.sent.wait()
            second.error = psycopg.OperationalError("the connection was lost")
            second.gate.set()
            epoch = await access_epoch(conns[2], KEYS)
            assert await leading == epoch
            assert await answered == epoch  # asked again, on its own connection
            with pytest.raises(psycopg.OperationalError):
                await failing
            assert checks.statements == 3

    asyncio.run(main())


def test_a_check_cancelled_just_as_its_turn_came_passes_the_turn_on(database_url: str) -> None:
    """Liveness: the turn to send the next statement is given to a check whose request goes away
    in the same step of the event loop. The others must not wait for a newcomer. (The instant
    cannot be reached through the public calls alone: the test plays the statement in flight.)"""

    async def main() -> None:
        async with connections(database_url, 2) as conns:
            checks = EpochChecks()
            checks._leading = True  # someone's statement is in flight
            turn = asyncio.create_task(checks.current(conns[0], KEYS))
            waiting = asyncio.create_task(checks.current(conns[1], KEYS))
            await asyncio.sleep(0.01)  # both wait for the next statement
            checks._leading = False  # it ends, and gives `turn` the next one ...
            checks._next()
            turn.cancel()  # ... whose request goes away before it could send it
            epoch = await access_epoch(conns[1], KEYS)
            assert await asyncio.wait_for(waiting, 10) == epoch
            assert turn.cancelled()

    asyncio.run(main())
