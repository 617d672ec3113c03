"""Liveness and readiness."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response

from fhir_server.api.deps import runtime
from fhir_server.api.responses import outcome_response
from fhir_server.errors import Issue
from fhir_server.metrics import (
    DB_POOL,
    EPOCH_CHECKS,
    REPLICA_LAG_BYTES,
    REPLICA_LAG_SECONDS,
    exposition,
)
from fhir_server.storage.database import head_revision, known_revisions, schema_revision


async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    """Ready when the database answers and its schema is at this code's newest migration, or at
    a newer one this code does not know: during a rollout the migrations run first, and the
    previous version keeps serving on the newer schema (migrations only add)."""
    try:
        async with runtime(request).db.connection(wait=5) as conn:
            current = await schema_revision(conn)
    except Exception as exc:  # any failure to reach the database means not ready
        return outcome_response(
            503, [Issue("transient", f"database unreachable: {type(exc).__name__}")]
        )
    head = head_revision()
    if current != head and (current is None or current in known_revisions()):
        return outcome_response(
            503, [Issue("transient", f"database schema at `{current}`, expected `{head}`")]
        )
    return Response(b'{"status":"ready"}', media_type="application/json")


async def metrics(request: Request) -> Response:
    """Prometheus metrics of this process."""
    for figure, value in runtime(request).db.stats().items():
        DB_POOL.labels(figure).set(value)
    replicas = runtime(request).replicas
    if replicas is not None:
        for replica in replicas.replicas:
            lag = replicas.lag(replica)
            behind, seconds = lag if lag is not None else (-1, -1.0)
            REPLICA_LAG_BYTES.labels(replica.name).set(behind)
            REPLICA_LAG_SECONDS.labels(replica.name).set(seconds)
        EPOCH_CHECKS.labels("checks").set(replicas.epochs.checks)
        EPOCH_CHECKS.labels("statements").set(replicas.epochs.statements)
    return Response(exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")


def install(app: FastAPI) -> None:
    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/readyz", readyz, methods=["GET"])
