"""Reads on a replica (docs/scaling.md#read-replicas): which server serves a read's data, and the
read-your-writes token (`X-FHIR-Read-After`) that write responses carry and reads honour.

Only reads, vreads, searches and history ask for a replica (api/fhir.py); every write,
conditional operation, Bundle, operation and page keeps the primary. The caller's access facts
are loaded on the primary (`Interaction.authorized`), the data statement runs on the replica with
those facts as parameters (security stays in the SQL), and then the facts' access epoch is read
again ON THE PRIMARY: if a fact-bearing write (a revoked Consent, an ended RelatedPerson) has
committed since the facts were loaded, the answer made on the replica is dropped and the read is
made again on the primary with the new facts. Concurrent reads share that check's statement
(storage/epoch_checks.py), so the primary's cost per routed read is a fraction of a statement
beside its AuditEvent. So a revocation counts for every caller from the
moment it commits, whatever the replica's lag; only the data itself may be up to
`FHIR_REPLICA_MAX_LAG_MS` old, and never older than the client's own token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_server.api.runtime import Runtime
from fhir_server.errors import BadRequest, FhirError
from fhir_server.metrics import READS_ROUTED, REPLICA_FALLBACKS
from fhir_server.services.context import Context
from fhir_server.storage.replicas import ReplicaUnavailable, current_lsn, format_lsn, parse_lsn
from fhir_server.storage.sql import Connection

T = TypeVar("T")

HEADER = "X-FHIR-Read-After"
COOKIE = "fhir_read_after"
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def read_after(request: Request) -> int | None:
    """The client's read-your-writes token: the `X-FHIR-Read-After` header (or the
    `fhir_read_after` cookie), a WAL position as PostgreSQL writes it (`0/16B3748`)."""
    headers = request.headers
    token = headers.get("x-fhir-read-after")
    name = HEADER
    if token is None:
        if "cookie" not in headers:
            return None
        token = request.cookies.get(COOKIE)
        name = f"the `{COOKIE}` cookie"
        if token is None:
            return None
    else:
        name = f"`{HEADER}`"
    lsn = parse_lsn(token)
    if lsn is None:
        raise BadRequest(
            f"{name} must be a WAL position such as `0/16B3748`, as a write response gives it",
            expression=(f"http.{HEADER}",),
        )
    return lsn


async def routed(
    runtime: Runtime,
    conn: Connection,
    ctx: Context,
    token: int | None,
    work: Callable[[Connection], Awaitable[T]],
    *,
    verifies: bool = False,
) -> T:
    """`work` (a read's data statements) on a replica when one may serve it, else on `conn`
    (the primary connection the caller's guard was loaded on). The guard may hold facts still
    to verify (`authorized(conn, optimistic=True)`); `verifies`: `work` verifies them itself
    when it runs on the primary (read.read does, in its data statement)."""
    replicas = runtime.replicas
    guard = ctx.guard
    if replicas is None:
        return await work(conn)
    route = replicas.route(token)
    if route.replica is None:
        REPLICA_FALLBACKS.labels(route.reason).inc()
        return await _on_primary(conn, ctx, work, verifies)
    pending = guard.pending_epoch
    loaded = pending or guard.epoch
    # the work sees settled facts: its statements on the replica must not read the epoch there
    guard.pending_epoch = None
    mark = len(guard.audited)
    failure: FhirError | None = None
    try:
        async with replicas.connection(route.replica) as data:
            try:
                result = await work(data)
            except FhirError as exc:  # a denial or a 404 on facts still to verify
                failure = exc
    except ReplicaUnavailable:
        del guard.audited[mark:]
        guard.pending_epoch = pending
        REPLICA_FALLBACKS.labels("failed").inc()
        return await _on_primary(conn, ctx, work, verifies)
    if loaded is not None:
        # the facts, checked on the primary after the data was read (in a statement shared with
        # the checks of concurrent reads, sent after this one asked: storage/epoch_checks.py)
        guard.pending_epoch = loaded
        if not await guard.verify(conn, await replicas.epochs.current(conn, loaded.keys)):
            # a fact-bearing write committed meanwhile: answered again on the new facts
            del guard.audited[mark:]
            REPLICA_FALLBACKS.labels("facts").inc()
            READS_ROUTED.labels("primary").inc()
            return await work(conn)
    READS_ROUTED.labels(route.target).inc()
    if failure is not None:
        raise failure
    return result


async def _on_primary(
    conn: Connection, ctx: Context, work: Callable[[Connection], Awaitable[T]], verifies: bool
) -> T:
    READS_ROUTED.labels("primary").inc()
    if not verifies:
        await ctx.guard.verify(conn)
    return await work(conn)


class ReadAfterHeader:
    """Every successful write under /fhir answers, beside its usual headers, `X-FHIR-Read-After`:
    the primary's WAL position once the write has committed (read after the handler's
    transaction ended, so it covers the commit). Installed only with replicas."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope["method"] in _READ_METHODS
            or not path.startswith("/fhir")
            or path.endswith("/_search")
        ):
            await self.app(scope, receive, send)
            return
        rt: Runtime = scope["app"].state.runtime

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                async with rt.db.connection() as conn:
                    lsn = await current_lsn(conn)
                MutableHeaders(scope=message)[HEADER] = format_lsn(lsn)
            await send(message)

        await self.app(scope, receive, sending)
