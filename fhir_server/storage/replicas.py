"""Read replicas with bounded staleness (`POSTGRES_REPLICA_URLS`, docs/scaling.md#read-replicas).

A `ReplicaSet` holds one small pool per streaming replica and a background task that samples,
every `SAMPLE_SECONDS`, the primary's `pg_current_wal_lsn()` and each replica's
`pg_last_wal_replay_lsn()`. It keeps the primary's samples of the last few seconds, so that it
can answer "which WAL position had the primary reached `max_lag` ago".

`route(read_after)` decides, without any I/O, where one read may run: a replica is eligible
iff its last sampled replay position is at least

- the primary's position at the first sample taken at or after `now - max_lag`: every commit
  made more than `max_lag` ago is then replayed (a sample is timed when its query is sent, so
  its position covers every commit before that instant; replay only moves forward, so an old
  replica sample is a lower bound), and
- the client's read-your-writes token (`read_after`, the LSN a write response gave it).

No eligible replica: the primary serves (a fallback, with its reason: `down` when no replica
answers, `lagging` when the positions above are not reached, `token` when only the client's
token is not). A replica whose sampling fails is down until a sample succeeds again; one that
is not in recovery (promoted: `pg_last_wal_replay_lsn()` is NULL) is down too.

Only statements that read go to a replica; the services choose (api/fhir.py routes reads,
vreads, searches and history), and everything else uses `Database` as before.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy.engine import make_url

from fhir_server.storage import sql
from fhir_server.storage.database import connect, connect_options, in_utc, libpq_url
from fhir_server.storage.epoch_checks import EpochChecks

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 0.02
# how long the primary's samples are kept (the largest max_lag worth configuring)
HISTORY_SECONDS = 10.0
# a replica that failed is tried again after this long
RETRY_SECONDS = 1.0

_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def parse_lsn(text: str) -> int | None:
    """A PostgreSQL LSN (`16/B374D848`) as a number; None when `text` is not one."""
    match = _LSN.fullmatch(text.strip())
    if match is None:
        return None
    return (int(match[1], 16) << 32) | int(match[2], 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


async def current_lsn(conn: sql.Connection) -> int:
    """The primary's WAL position now: after a commit on any connection, at or past it."""
    cur = await conn.execute("SELECT pg_current_wal_lsn()::text")
    row = await cur.fetchone()
    assert row is not None
    lsn = parse_lsn(str(row[0]))
    assert lsn is not None
    return lsn


def display_name(url: str) -> str:
    """A replica's name for metrics and logs: host, port and database, never credentials."""
    parsed = make_url(url)
    host = parsed.host or str(parsed.query.get("host", "socket"))
    return f"{host}:{parsed.port or 5432}/{parsed.database or ''}"


class ReplicaUnavailable(Exception):
    """The replica failed while serving a read (connection lost, recovery conflict): the caller
    runs the read again on the primary."""


@dataclass(eq=False)
class Replica:
    name: str
    url: str
    pool: AsyncConnectionPool[Any]
    # the last sampled replay position; None while the replica is down
    replay: int | None = None
    sampled_at: float = 0.0
    down_since: float | None = field(default_factory=time.monotonic)
    _probe: psycopg.AsyncConnection[Any] | None = None
    _retry_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Route:
    """Where one read runs: a replica, or the primary (`replica` None) and why."""

    replica: Replica | None
    reason: str | None = None  # down, lagging, token: why not a replica

    @property
    def target(self) -> str:
        return "primary" if self.replica is None else self.replica.name


class ReplicaSet:
    def __init__(
        self,
        primary_url: str,
        replica_urls: Sequence[str],
        *,
        max_lag_ms: int,
        pool_size: int = 4,
        limits: Mapping[str, str] | None = None,
        pooled: bool = False,
    ) -> None:
        self.max_lag = max_lag_ms / 1000
        self._primary_url = libpq_url(primary_url)
        self._limits = dict(limits or {})
        self._pooled = pooled
        self.replicas = [
            Replica(
                display_name(url),
                libpq_url(url),
                AsyncConnectionPool(
                    libpq_url(url),
                    min_size=0,
                    max_size=pool_size,
                    kwargs={"autocommit": True, **connect_options(pooled, self._limits)},
                    configure=in_utc if pooled else None,
                    open=False,
                    name=f"replica {display_name(url)}",
                    # a replica that is gone must not hold a request for the pool's 30 s
                    timeout=2,
                ),
            )
            for url in replica_urls
        ]
        # (monotonic time the sample was asked, primary LSN), oldest first
        self._times: deque[float] = deque()
        self._lsns: deque[int] = deque()
        self._primary: psycopg.AsyncConnection[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._turn = itertools.count()
        self.sampled = asyncio.Event()
        # the access-epoch checks of the reads served here, made on the primary in batches
        self.epochs = EpochChecks()

    async def open(self) -> None:
        for replica in self.replicas:
            await replica.pool.open(wait=False)
        self._task = asyncio.create_task(self._sample_forever(), name="replica sampler")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        for conn in (self._primary, *(r._probe for r in self.replicas)):
            if conn is not None:
                await conn.close()
        for replica in self.replicas:
            await replica.pool.close()

    # --- routing ------------------------------------------------------------------------

    def required(self, now: float | None = None) -> int | None:
        """The position a replica must have replayed to serve within `max_lag`: the primary's
        at its first sample asked at or after `now - max_lag`; None when there is none (the
        sampler has not run or has stalled for longer than `max_lag`)."""
        now = time.monotonic() if now is None else now
        at = bisect.bisect_left(self._times, now - self.max_lag)
        return self._lsns[at] if at < len(self._lsns) else None

    def route(self, read_after: int | None = None) -> Route:
        """Where a read that must see `read_after` (a client's token) may run."""
        needed = self.required()
        eligible = []
        reason = "down"
        for replica in self.replicas:
            if replica.replay is None:
                continue
            if needed is None or replica.replay < needed:
                reason = "lagging" if reason != "token" else reason
                continue
            if read_after is not None and replica.replay < read_after:
                reason = "token"
                continue
            eligible.append(replica)
        if not eligible:
            return Route(None, reason)
        return Route(eligible[next(self._turn) % len(eligible)])

    @asynccontextmanager
    async def connection(self, replica: Replica) -> AsyncIterator[sql.Connection]:
        """A connection of `replica` for one read; a failure of the replica itself (lost
        connection, none to be had, a query cancelled by a conflict with recovery) marks it
        down and raises ReplicaUnavailable, and the caller reads from the primary."""
        try:
            async with replica.pool.connection() as conn:
                yield conn
        except (psycopg.errors.SerializationFailure, PoolTimeout) as exc:
            raise ReplicaUnavailable(replica.name) from exc
        except psycopg.OperationalError as exc:
            if isinstance(exc, psycopg.errors.QueryCanceled):
                raise  # the statement's own timeout: the primary would time out too
            self._down(replica, exc)
            raise ReplicaUnavailable(replica.name) from exc

    def lag(self, replica: Replica) -> tuple[int, float] | None:
        """How far `replica` is behind the primary: bytes of WAL, and seconds since the primary
        was last at a position the replica has replayed. None while it is down."""
        if replica.replay is None or not self._lsns:
            return None
        behind = max(0, self._lsns[-1] - replica.replay)
        if behind == 0:
            return 0, 0.0
        # the last sample at or below the replica's position
        at = bisect.bisect_right(self._lsns, replica.replay) - 1
        since = self._times[at] if at >= 0 else self._times[0]
        return behind, max(0.0, time.monotonic() - since)

    # --- sampling -----------------------------------------------------------------------

    async def _sample_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the sampler die: the next round tries again
                log.exception("sampling the replicas failed")
            await asyncio.sleep(max(0.0, SAMPLE_SECONDS - (time.monotonic() - started)))

    async def sample(self) -> None:
        """One round: every replica's replay position, then the primary's position. Replicas
        first: a replica's sample is then no newer than the primary's that follows it, so
        `lag()` never reads a replica as ahead of the primary."""
        await asyncio.gather(*(self._sample_replica(r) for r in self.replicas))
        asked = time.monotonic()
        try:
            if self._primary is None or self._primary.closed:
                self._primary = await connect(
                    self._primary_url, pooled=self._pooled, autocommit=True, connect_timeout=5
                )
            cur = await self._primary.execute("SELECT pg_current_wal_lsn()::text")
            row = await cur.fetchone()
        except psycopg.Error:
            if self._primary is not None:
                await self._primary.close()
            self._primary = None
            return
        assert row is not None
        lsn = parse_lsn(str(row[0]))
        assert lsn is not None
        self._times.append(asked)
        self._lsns.append(lsn)
        while self._times and self._times[0] < asked - HISTORY_SECONDS:
            self._times.popleft()
            self._lsns.popleft()
        self.sampled.set()

    async def _sample_replica(self, replica: Replica) -> None:
        now = time.monotonic()
        if replica._probe is None and now < replica._retry_at:
            return
        try:
            if replica._probe is None or replica._probe.closed:
                replica._probe = await connect(
                    replica.url, pooled=self._pooled, autocommit=True, connect_timeout=2
                )
            cur = await replica._probe.execute("SELECT pg_last_wal_replay_lsn()::text")
            row = await cur.fetchone()
        except psycopg.Error as exc:
            self._down(replica, exc)
            return
        replay = parse_lsn(str(row[0])) if row is not None and row[0] is not None else None
        if replay is None:
            self._down(replica, None)  # not a standby (promoted, or a primary by mistake)
            return
        if replica.down_since is not None:
            log.info("replica %s is serving", replica.name)
            replica.down_since = None
        replica.replay = max(replay, replica.replay or 0)
        replica.sampled_at = now

    def _down(self, replica: Replica, exc: BaseException | None) -> None:
        if replica.down_since is None:
            log.warning(
                "replica %s is not used: %s",
                replica.name,
                type(exc).__name__ if exc is not None else "not in recovery",
            )
            replica.down_since = time.monotonic()
        replica.replay = None
        replica._retry_at = time.monotonic() + RETRY_SECONDS
        probe, replica._probe = replica._probe, None
        if probe is not None and not probe.closed:
            asyncio.get_running_loop().create_task(probe.close())
