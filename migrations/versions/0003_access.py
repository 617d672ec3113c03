"""access control: the creator on every history row, an index for the creator filter, and the
epoch of the facts access decisions are made from

Revision ID: 0003_access
Revises: 0002_search_index
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_access"
down_revision = "0002_search_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # vread and history of an unverified account filter versions by who created the resource.
    op.add_column("resource_history", sa.Column("created_by", sa.Text, nullable=True))
    op.execute(
        "UPDATE resource_history h SET created_by = r.created_by FROM resources r"
        " WHERE r.resource_type = h.resource_type AND r.id = h.id AND r.created_by IS NOT NULL"
    )
    # `compartments && ... OR created_by = ...`: a bitmap OR of the GIN index and this one.
    op.create_index(
        "resources_created_by",
        "resources",
        ["created_by"],
        postgresql_where=sa.text("created_by IS NOT NULL"),
    )


    # Bumped in the same transaction as every write that can change an access decision's facts
    # (Person, RelatedPerson, Consent, CareTeam, Patient): servers cache facts per epoch.
    op.create_table(
        "access_epoch",
        sa.Column("id", sa.SmallInteger, primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
        sa.CheckConstraint("id = 1", name="access_epoch_one_row"),
    )
    op.execute("INSERT INTO access_epoch (id, value) VALUES (1, 1)")


def downgrade() -> None:
    op.drop_table("access_epoch")
    op.drop_index("resources_created_by", table_name="resources")
    op.drop_column("resource_history", "created_by")
