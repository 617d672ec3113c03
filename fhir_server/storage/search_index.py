"""Writing the search index with the resource: the SQL that keeps the search tables in step.

A write is one statement. Its first common table expression, `written`, inserts or updates the
current row; the others write the history row, delete the resource's old index rows and insert
its new ones from arrays (`unnest`), only if `written` wrote a row. One round trip per resource,
and no transaction block needed for a single create.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fhir_server.search.index import IndexRows
from fhir_server.storage.sql import Connection, copy_rows
from fhir_server.storage.tables import SEARCH_TABLES

_ARRAY_TYPES = {"DateTime": "timestamptz[]", "Numeric": "numeric[]"}

# table kind -> (column, PostgreSQL array type) after (resource_type, id, code)
_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    kind: tuple(
        (column.name, _ARRAY_TYPES.get(type(column.type).__name__, "text[]"))
        for column in table.columns
        if column.name not in {"resource_type", "id"}
    )
    for kind, table in SEARCH_TABLES.items()
}


def index_ctes(*, delete_old: bool) -> str:
    """Common table expressions for a statement whose CTE `written` returns the row written:
    they insert its index rows (`index_params`), after deleting its old ones if `delete_old`."""
    parts: list[str] = []
    for kind, table in SEARCH_TABLES.items():
        name = table.name
        if delete_old:
            parts.append(
                f"delete_{kind} AS (DELETE FROM {name} WHERE resource_type = %(resource_type)s"
                f" AND id = %(id)s AND EXISTS (SELECT FROM written))"
            )
        columns = _COLUMNS[kind]
        names = ", ".join(column for column, _ in columns)
        arrays = ", ".join(f"%({kind}_{column})s::{array}" for column, array in columns)
        parts.append(
            f"insert_{kind} AS (INSERT INTO {name} (resource_type, id, {names})"
            f" SELECT written.resource_type, written.id, value.* FROM written,"
            f" unnest({arrays}) AS value)"
        )
    return ",\n".join(parts)


def index_params(rows: IndexRows | None) -> dict[str, list[Any]]:
    """The arrays `index_ctes` reads: one per column of each index table."""
    params: dict[str, list[Any]] = {}
    for kind, columns in _COLUMNS.items():
        values: Sequence[tuple[Any, ...]] = getattr(rows, kind) if rows is not None else ()
        for position, (column, _) in enumerate(columns):
            params[f"{kind}_{column}"] = [row[position] for row in values]
    return params


async def copy_index(
    conn: Connection, entries: Sequence[tuple[str, str, IndexRows | None]]
) -> None:
    """Insert the index rows of many resources with COPY, one stream per table (a
    1,000-resource transaction carries some 30,000 of them)."""
    for kind, table in SEARCH_TABLES.items():
        rows = [
            (resource_type, id, *row)
            for resource_type, id, index in entries
            if index is not None
            for row in getattr(index, kind)
        ]
        columns = ("resource_type", "id", *(column for column, _ in _COLUMNS[kind]))
        await copy_rows(conn, table.name, columns, rows)
