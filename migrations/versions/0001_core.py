"""core storage: current state and history

Revision ID: 0001_core
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0001_core"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("content", JSONB, nullable=True),
        sa.Column("compartments", ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("created_by", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("resource_type", "id", name="resources_pkey"),
    )
    op.create_index(
        "resources_compartments_gin", "resources", ["compartments"], postgresql_using="gin"
    )
    op.create_index(
        "resources_type_updated", "resources", ["resource_type", "last_updated", "id"]
    )
    op.create_table(
        "resource_history",
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("content", JSONB, nullable=True),
        sa.Column("compartments", ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.PrimaryKeyConstraint(
            "resource_type", "id", "version_id", name="resource_history_pkey"
        ),
    )
    op.create_index("resource_history_updated", "resource_history", ["last_updated"])
    op.create_index(
        "resource_history_type_updated", "resource_history", ["resource_type", "last_updated"]
    )
    op.create_index(
        "resource_history_compartments_gin",
        "resource_history",
        ["compartments"],
        postgresql_using="gin",
    )


def downgrade() -> None:
    op.drop_table("resource_history")
    op.drop_table("resources")
