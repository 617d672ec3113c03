"""Writing the search index with the resource: the SQL that keeps the search tables in step.

A write is one statement. Its first common table expression, `written`, inserts or updates the
current row; the others write the history row, delete the resource's old index rows and insert
its new ones from arrays (`unnest`), only if `written` wrote a row. One round trip per resource,
and no transaction block needed for a single create.

**Bounded keys.** A B-tree index row holds at most about 2,700 bytes, and PostgreSQL refuses a
row whose index entry is larger. An indexed text column therefore holds a *key*
(:func:`index_key`): the text itself when it has at most `KEY_BYTES` bytes in UTF-8, else its
first `KEY_BYTES` bytes (cut at a character), with the whole text in the column's `..._full`
twin, which is null for short texts. The token index, with two such columns, stays under 2,300
bytes. The planner (`search_sql.py`) compares keys where a key decides, and the whole text where
it does not. Numbers in an index are rounded to `KEY_DIGITS` significant digits
(:func:`index_number`): a `numeric` takes about one byte per two digits, and R4 sets no limit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any, Final

from fhir_server.search.index import IndexRows
from fhir_server.storage.sql import Connection, copy_rows
from fhir_server.storage.tables import SEARCH_TABLES

KEY_BYTES: Final = 1000
"""The most UTF-8 bytes of a text that go into an index; a longer text is indexed by its start."""
_SHORT: Final = KEY_BYTES // 4  # a text of at most this many characters has at most KEY_BYTES
UNAMBIGUOUS_BYTES: Final = KEY_BYTES - 4
"""A text of at most this many bytes never equals the key of a longer one (those keep at least
KEY_BYTES - 3 bytes), so a key equal to it, or starting with it, decides alone."""
KEY_DIGITS: Final = 1000
"""The significant digits of a number kept in the index (about 500 bytes)."""
_ROUND: Final = Context(prec=KEY_DIGITS, rounding=ROUND_HALF_EVEN, Emax=999_999, Emin=-999_999)


def index_key(text: str) -> tuple[str, str | None]:
    """``(key, full)``: ``text`` and None when it fits in `KEY_BYTES`, else its first
    `KEY_BYTES` bytes (whole characters) and ``text``."""
    if len(text) <= _SHORT:
        return text, None
    encoded = text.encode()
    if len(encoded) <= KEY_BYTES:
        return text, None
    return encoded[:KEY_BYTES].decode(errors="ignore"), text


def key_prefix(text: str) -> str:
    """The start of ``text`` that is at most `UNAMBIGUOUS_BYTES` long, in whole characters."""
    if len(text) <= UNAMBIGUOUS_BYTES // 4:
        return text
    return text.encode()[:UNAMBIGUOUS_BYTES].decode(errors="ignore")


def unambiguous(text: str) -> bool:
    """Whether a key compared with ``text`` (equal, or starting with it) decides alone."""
    return len(text) <= UNAMBIGUOUS_BYTES // 4 or len(text.encode()) <= UNAMBIGUOUS_BYTES


def index_number(value: Decimal) -> Decimal:
    """``value``, rounded to `KEY_DIGITS` significant digits if it has more."""
    if len(value.as_tuple().digits) <= KEY_DIGITS:
        return value
    return _ROUND.plus(value)


def _key(text: str | None) -> str | None:
    return None if text is None else index_key(text)[0]


def _full(text: str | None) -> str | None:
    return None if text is None else index_key(text)[1]


def _string_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    code, value, exact = row
    key, full = index_key(value)
    return code, key, exact, full


def _token_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    code, system, value, text = row
    return code, _key(system), _key(value), text, _full(system), _full(value)


def _uri_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    code, value = row
    key, full = index_key(value)
    return code, key, full


def _number_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    code, value, low, high = row
    return code, index_number(value), low, high


def _quantity_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    *head, value, low, high = row
    return (*head, index_number(value), low, high)


def _as_is(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return row


# table kind -> an IndexRows row as the table stores it (in `_COLUMNS` order)
_STORED: Final[dict[str, Callable[[tuple[Any, ...]], tuple[Any, ...]]]] = {
    "string": _string_row,
    "token": _token_row,
    "date": _as_is,
    "reference": _as_is,
    "number": _number_row,
    "quantity": _quantity_row,
    "uri": _uri_row,
}


def stored_rows(kind: str, rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``rows`` of one table as it stores them: bounded keys, their full texts, rounded numbers."""
    store = _STORED[kind]
    if store is _as_is:
        return list(rows)
    return [store(row) for row in rows]


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
        values = stored_rows(kind, getattr(rows, kind)) if rows is not None else []
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
            for row in stored_rows(kind, getattr(index, kind))
        ]
        columns = ("resource_type", "id", *(column for column, _ in _COLUMNS[kind]))
        await copy_rows(conn, table.name, columns, rows)
