"""The ASGI application: create_app(settings, database_url)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from fhir_server.api import errors, fhir, ops, smart
from fhir_server.api.runtime import Runtime
from fhir_server.settings import Settings
from fhir_server.storage.database import Database
from fhir_server.validation import ResourceValidator

log = logging.getLogger(__name__)


def create_app(settings: Settings, database_url: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(database_url, pool_size=settings.db_pool_size)
        await db.open()
        app.state.runtime = Runtime(settings, db, ResourceValidator())
        log.warning("authentication is not enabled: every client can read and write every resource")
        try:
            yield
        finally:
            await db.close()

    app = FastAPI(
        title="FHIR R4 server",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    errors.install(app)
    fhir.install(app)
    ops.install(app)
    smart.install(app)
    return app
