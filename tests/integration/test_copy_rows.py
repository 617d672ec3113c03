"""COPY's text format: whatever goes in through `copy_rows` comes back as it was."""

from __future__ import annotations

import asyncio
from datetime import UTC
from typing import Any

import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_server.storage.sql import copy_rows

TEXT = st.text(
    alphabet=st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=30
)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.none(), TEXT),
            st.lists(TEXT, max_size=3),
            st.one_of(st.none(), st.booleans()),
            st.one_of(st.none(), st.decimals(allow_nan=False, allow_infinity=False, places=4)),
            st.one_of(st.none(), st.datetimes(timezones=st.just(UTC))),
        ),
        max_size=5,
    )
)
def test_copy_round_trip(database_url: str, rows: list[tuple[Any, ...]]) -> None:
    async def go() -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(
            database_url, options="-c TimeZone=UTC"
        ) as conn:
            await conn.execute(
                "CREATE TEMP TABLE copied (n serial, t text, a text[], b boolean, d numeric,"
                " m timestamptz)"
            )
            await copy_rows(conn, "copied", ["t", "a", "b", "d", "m"], rows)
            cursor = await conn.execute("SELECT t, a, b, d, m FROM copied ORDER BY n")
            return await cursor.fetchall()

    assert asyncio.run(go()) == [tuple(r) for r in rows]
