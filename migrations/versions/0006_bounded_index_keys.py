"""bounded index keys: long search values keep a short key in the index and their whole text beside

A B-tree index row holds at most about 2,700 bytes: a Patient whose family name had 3 KB was
refused by PostgreSQL ("index row size exceeds btree maximum"), and the request failed. The
indexed text columns (`search_string.value`, `search_token.system` and `.value`,
`search_uri.value`) now hold at most 1,000 bytes (storage/search_index.py `KEY_BYTES`), and a
longer text goes whole into a new `..._full` column, null for short texts. The indexes are
unchanged. Rows already stored with a longer text (1,000 to 2,700 bytes) are split the same way
here, so that searches find them as they find new ones.

Revision ID: 0006_bounded_index_keys
Revises: 0005_idempotency
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_bounded_index_keys"
down_revision = "0005_idempotency"
branch_labels = None
depends_on = None

KEY_BYTES = 1000  # storage/search_index.py KEY_BYTES, as of this revision

# table -> its indexed text columns and their collations
COLUMNS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "search_string": (("value", "C"),),
    "search_token": (("system", None), ("value", None)),
    "search_uri": (("value", "C"),),
}


def _key(column: str) -> str:
    """SQL for the longest start of `column` in whole characters with at most KEY_BYTES bytes
    (what Python's `encode()[:KEY_BYTES].decode(errors="ignore")` keeps)."""
    return (
        f"(SELECT left({column}, n) FROM generate_series({KEY_BYTES // 4}, {KEY_BYTES}) AS n"
        f" WHERE octet_length(left({column}, n)) <= {KEY_BYTES} ORDER BY n DESC LIMIT 1)"
    )


def upgrade() -> None:
    for table, columns in COLUMNS.items():
        for column, collation in columns:
            op.add_column(
                table, sa.Column(f"{column}_full", sa.Text(collation=collation), nullable=True)
            )
        for column, _ in columns:
            op.execute(
                f"UPDATE {table} SET {column}_full = {column}, {column} = {_key(column)}"
                f" WHERE octet_length({column}) > {KEY_BYTES}"
            )


def downgrade() -> None:
    for table, columns in COLUMNS.items():
        # A row whose whole texts would not fit in a B-tree row again (about 2,700 bytes with the
        # key columns) cannot go back: it goes (`fhir-server reindex` after an upgrade restores it).
        whole = " + ".join(
            f"octet_length(coalesce({column}_full, {column}))" for column, _ in columns
        )
        op.execute(f"DELETE FROM {table} WHERE {whole} > 2400")
        for column, _ in columns:
            op.execute(
                f"UPDATE {table} SET {column} = {column}_full WHERE {column}_full IS NOT NULL"
            )
            op.drop_column(table, f"{column}_full")
