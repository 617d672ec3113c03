"""The reference ceiling: the least an HTTP read of one stored Patient can cost in this stack.

A minimal FastAPI app that reads the same JSONB row by primary key with psycopg 3 and returns the
stored text. It runs under the same uvicorn settings as the server (fhir_server/cli.py), so the
ratio server / reference is what the server's own work costs.

Run: REFERENCE_POSTGRES_URL=postgresql://... PORT=8099 python -m bench.reference_app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from psycopg_pool import AsyncConnectionPool

READ = "SELECT content::text FROM resources WHERE resource_type='Patient' AND id=%s"


def create_app(url: str, pool_size: int = 10) -> FastAPI:
    # The server's default FHIR_DB_POOL_SIZE is 10; autocommit makes a read one round trip.
    pool = AsyncConnectionPool(
        url, min_size=pool_size, max_size=pool_size, kwargs={"autocommit": True}, open=False
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True)
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/fhir/Patient/{id}")
    async def read(id: str) -> Response:
        async with pool.connection() as conn:
            row = await (await conn.execute(READ, (id,))).fetchone()
        if row is None:
            return Response(status_code=404)
        return Response(row[0], media_type="application/fhir+json")

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response(b'{"status":"ready"}', media_type="application/json")

    return app


def main() -> None:
    import uvicorn

    # The same call as `fhir-server serve` (fhir_server/cli.py): loop and http "auto" pick uvloop
    # and httptools when they are installed.
    uvicorn.run(
        create_app(os.environ["REFERENCE_POSTGRES_URL"]),
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8099")),
        log_level=os.environ.get("LOG_LEVEL", "warning"),
        access_log=False,
        proxy_headers=True,
    )


if __name__ == "__main__":
    main()
