"""search index: typed tables of search values

Revision ID: 0002_search_index
Revises: 0001_core
Create Date: 2026-11-23
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002_search_index"
down_revision = "0001_core"
branch_labels = None
depends_on = None

C = "C"  # byte-order collation: a B-tree on such a column serves `LIKE 'prefix%'`

# table -> (its value columns, the column lists of its search indexes)
TABLES: dict[str, tuple[list[sa.Column[Any]], list[list[str]]]] = {
    "search_string": (
        [
            sa.Column("value", sa.Text(collation=C), nullable=False),
            sa.Column("exact", sa.Text, nullable=False),
        ],
        [["resource_type", "code", "value"]],
    ),
    "search_token": (
        [
            sa.Column("system", sa.Text, nullable=True),
            sa.Column("value", sa.Text, nullable=True),
            sa.Column("text", sa.Text(collation=C), nullable=True),
        ],
        [["resource_type", "code", "value", "system"]],
    ),
    "search_date": (
        [
            sa.Column("low", sa.DateTime(timezone=True), nullable=False),
            sa.Column("high", sa.DateTime(timezone=True), nullable=False),
        ],
        [["resource_type", "code", "low"], ["resource_type", "code", "high"]],
    ),
    "search_reference": (
        [
            sa.Column("target_type", sa.String(64), nullable=True),
            sa.Column("target_id", sa.String(64), nullable=True),
            sa.Column("url", sa.Text, nullable=True),
            sa.Column("identifier_system", sa.Text, nullable=True),
            sa.Column("identifier_value", sa.Text, nullable=True),
        ],
        [["resource_type", "code", "target_id", "target_type"], ["target_type", "target_id"]],
    ),
    "search_number": (
        [
            sa.Column("value", sa.Numeric, nullable=False),
            sa.Column("low", sa.Numeric, nullable=False),
            sa.Column("high", sa.Numeric, nullable=False),
        ],
        [["resource_type", "code", "value"]],
    ),
    "search_quantity": (
        [
            sa.Column("system", sa.Text, nullable=True),
            sa.Column("unit_code", sa.Text, nullable=True),
            sa.Column("unit", sa.Text, nullable=True),
            sa.Column("value", sa.Numeric, nullable=False),
            sa.Column("low", sa.Numeric, nullable=False),
            sa.Column("high", sa.Numeric, nullable=False),
        ],
        [["resource_type", "code", "value"]],
    ),
    "search_uri": (
        [sa.Column("value", sa.Text(collation=C), nullable=False)],
        [["resource_type", "code", "value"]],
    ),
}


def upgrade() -> None:
    for name, (columns, indexes) in TABLES.items():
        op.create_table(
            name,
            sa.Column("resource_type", sa.String(64), nullable=False),
            sa.Column("id", sa.String(64), nullable=False),
            sa.Column("code", sa.String(64), nullable=False),
            *columns,
        )
        op.create_index(f"{name}_resource", name, ["resource_type", "id"])
        for position, index_columns in enumerate(indexes, start=1):
            # `id` rides along so that a search reads its candidates from the index alone
            op.create_index(
                f"{name}_{position}", name, index_columns, postgresql_include=["id"]
            )
        # A parameter code nearly decides the resource type (`birthdate`: Patient, Person,
        # RelatedPerson). Without these statistics PostgreSQL multiplies the two selectivities,
        # underestimates by 50x, and plans `birthdate=ge1980` as a full join and sort.
        op.execute(
            f"CREATE STATISTICS {name}_type_code (dependencies, mcv) ON resource_type, code"
            f" FROM {name}"
        )


    # A search checks `deleted` on every candidate: with it in the primary key's index, that check
    # is an index-only probe instead of a fetch of the whole row.
    op.drop_constraint("resources_pkey", "resources", type_="primary")
    op.execute(
        "ALTER TABLE resources ADD CONSTRAINT resources_pkey"
        " PRIMARY KEY (resource_type, id) INCLUDE (deleted)"
    )


def downgrade() -> None:
    op.drop_constraint("resources_pkey", "resources", type_="primary")
    op.create_primary_key("resources_pkey", "resources", ["resource_type", "id"])
    for name in TABLES:
        op.drop_table(name)
