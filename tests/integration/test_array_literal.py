"""`array_literal` sends a set of strings as one `text[]` literal: PostgreSQL must read back
exactly the strings, whatever characters they hold."""

from __future__ import annotations

from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_server.storage.repository import array_literal

texts = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=st.frozensets(texts, max_size=6))
def test_postgres_reads_back_the_same_strings(
    db: psycopg.Connection[Any], values: frozenset[str]
) -> None:
    # the connection is only read from: sharing it between examples is harmless
    row = db.execute("SELECT %s::text[]", (array_literal(values),)).fetchone()
    assert row is not None
    assert row[0] == sorted(values)
