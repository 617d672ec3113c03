"""A context's guard is required (issue 12): a context built without one is a TypeError, never
an unrestricted System guard by default, and the guard of a caller not known yet (`nobody()`)
is denied every read, search and write against the real database."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import MISSING, fields
from typing import Any

import psycopg
import pytest

from fhir_server.errors import AccessDenied
from fhir_server.services.context import Context, nobody, server_guard
from fhir_server.services.interactions import create, delete, read, search, update
from fhir_server.settings import Settings
from fhir_server.validation import default_validator


def context(guard: Any) -> Context:
    return Context(
        settings=Settings(), validator=default_validator(), base_url="http://t/fhir", guard=guard
    )


def test_a_context_without_a_guard_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="guard"):
        Context(settings=Settings(), validator=default_validator(), base_url="")  # type: ignore[call-arg]


def test_the_guard_has_no_default() -> None:
    (guard,) = [f for f in fields(Context) if f.name == "guard"]
    assert guard.default is MISSING
    assert guard.default_factory is MISSING


def test_nobody_sees_and_writes_nothing(database_url: str) -> None:
    tag = uuid.uuid4().hex
    patient = {
        "resourceType": "Patient",
        "meta": {"tag": [{"system": "urn:test:nobody", "code": tag}]},
        "name": [{"family": f"Nobody{tag}"}],
    }

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            async with conn.transaction():
                made = await create.create(context(server_guard()), conn, "Patient", patient)
            id = made.version.id
            ctx = context(nobody())
            assert ctx.guard.grants("read", ("Patient", "Observation")) == {
                "Patient": None,
                "Observation": None,
            }
            with pytest.raises(AccessDenied):
                await read.read(ctx, conn, "Patient", id)
            with pytest.raises(AccessDenied):
                await search.search(ctx, conn, "Patient", [("_tag", f"urn:test:nobody|{tag}")])
            with pytest.raises(AccessDenied):
                await search.search(ctx, conn, "Observation", [], compartment=("Patient", id))
            with pytest.raises(AccessDenied):
                async with conn.transaction():
                    await create.create(ctx, conn, "Patient", patient)
            with pytest.raises(AccessDenied):
                async with conn.transaction():
                    await update.update(ctx, conn, "Patient", id, {**patient, "id": id})
            with pytest.raises(AccessDenied):
                async with conn.transaction():
                    await delete.delete(ctx, conn, "Patient", id)
            # and nothing was written: the server still sees the one version it made
            found = await read.read(context(server_guard()), conn, "Patient", id)
            assert found.version_id == 1 and not found.deleted

    asyncio.run(go())
