"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from sqlalchemy import text

from fhir_server.api.deps import RuntimeDep
from fhir_server.api.responses import outcome_response
from fhir_server.errors import Issue
from fhir_server.storage.database import current_revision, head_revision

router = APIRouter()


@router.get("/healthz")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/readyz")
async def readyz(rt: RuntimeDep) -> Response:
    """Ready when the database answers and its schema is at the newest migration."""
    try:
        async with rt.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            current = await conn.run_sync(current_revision)
    except Exception as exc:  # any failure to reach the database means not ready
        return outcome_response(
            503, [Issue("transient", f"database unreachable: {type(exc).__name__}")]
        )
    head = await asyncio.to_thread(head_revision, rt.database_url)
    if current != head:
        return outcome_response(
            503, [Issue("transient", f"database schema at `{current}`, expected `{head}`")]
        )
    return Response(b'{"status":"ready"}', media_type="application/json")
