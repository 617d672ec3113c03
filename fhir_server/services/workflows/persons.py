"""The Persons that carry an identifier, as the server reads them: how an account of an
upstream identity provider (its subject) finds the Person it signs in as
(fhir_server/web/upstream.py, docs/smart-upstream.md)."""

from __future__ import annotations

from urllib.parse import quote

import orjson

from fhir_server.services.context import Context
from fhir_server.services.interactions import conditional, read
from fhir_server.storage.sql import Connection


def escaped(value: str) -> str:
    """A token search value with FHIR's separators escaped (`\\`, `|`, `,`, `$`)."""
    for char in ("\\", "|", ",", "$"):
        value = value.replace(char, "\\" + char)
    return value


async def persons_with_identifier(
    ctx: Context, conn: Connection, system: str, value: str, *, limit: int = 2
) -> list[tuple[str, bool]]:
    """(id, active) of at most `limit` Persons with the identifier `system|value`, exactly,
    read as the server (whoever `ctx` acts for). Person.active absent means in use."""
    server = ctx.as_server()
    criteria = "identifier=" + quote(f"{escaped(system)}|{escaped(value)}", safe="")
    ids = await conditional.matching_ids(server, conn, "Person", criteria, limit=limit)
    found = []
    for id in ids:
        stored = await read.read(server, conn, "Person", id)
        person = orjson.loads(stored.content or "{}")
        found.append((id, isinstance(person, dict) and person.get("active") is not False))
    return found
