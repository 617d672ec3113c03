"""The access-epoch checks of reads served by a replica, made on the primary a batch at a time.

A read whose data came from a replica must still see every revocation committed before it
answers, so the epoch of its facts' keys is read on the primary after its data
(api/routing.py). One statement per read would cost the primary as much as serving the read
itself, and the replica would add no capacity; so concurrent checks share statements: whoever
asks while no statement of theirs is in flight sends one, for itself and for everyone who asked
before that instant, on its own connection; whoever asks while one is in flight waits for the
next, which starts after it asked. So every check is answered by a statement that began after
the check was asked (after the read's data), exactly as a statement of its own would be: a
revocation committed before a check counts for it. Statements run in READ COMMITTED (the
server's isolation), so each sees every commit made before it started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from fhir_server.storage import repository
from fhir_server.storage.sql import Connection


class EpochChecks:
    """`await checks.current(conn, keys)`: the access epoch of `keys` on the primary, as
    `repository.access_epoch(conn, keys)` would read it, sharing statements with the checks
    asked meanwhile. One per process (its event loop)."""

    def __init__(self) -> None:
        self._waiting: list[tuple[frozenset[str], asyncio.Future[int | None]]] = []
        self._leading = False
        # since start, for `db_replica_epoch_checks` (api/ops.py)
        self.statements = 0
        self.checks = 0

    async def current(self, conn: Connection, keys: frozenset[str]) -> int:
        self.checks += 1
        while True:
            if not self._leading:
                return await self._lead(conn, keys)
            waiting: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
            self._waiting.append((keys, waiting))
            try:
                epoch = await waiting
            except asyncio.CancelledError:
                if waiting.done() and not waiting.cancelled():
                    # given the turn to send the next statement just as its request went
                    # away: the turn passes on, or those waiting would wait for a newcomer
                    self._next()
                raise
            if epoch is not None:
                return epoch
            # None: the statement that was to answer it failed, or it is this one's turn to
            # send the next: ask again

    async def _lead(self, conn: Connection, keys: frozenset[str]) -> int:
        self._leading = True
        batch: list[tuple[frozenset[str], asyncio.Future[int | None]]] = []
        try:
            # one turn of the event loop first: the checks of reads that finished in the same
            # turn join this statement instead of waiting for the next
            await asyncio.sleep(0)
            batch, self._waiting = self._waiting, []
            self.statements += 1
            values = await repository.access_epoch_values(conn, keys.union(*(k for k, _ in batch)))
        except BaseException:
            _answer((f for _, f in batch), None)  # each asks again, on its own connection
            raise
        finally:
            self._leading = False
            self._next()
        for their_keys, future in batch:
            _answer((future,), sum(values.get(k, 0) for k in their_keys))
        return sum(values.get(k, 0) for k in keys)

    def _next(self) -> None:
        """Whoever asked while the last statement ran (and still waits) sends the next one."""
        if self._leading:
            return
        while self._waiting:
            _, next_one = self._waiting.pop(0)
            if not next_one.done():
                next_one.set_result(None)
                return


def _answer(futures: Iterable[asyncio.Future[int | None]], value: int | None) -> None:
    for future in futures:
        if not future.done():  # not cancelled (its request went away)
            future.set_result(value)
