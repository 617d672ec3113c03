"""access epochs per key: one counter per fact-bearing node instead of one global row

The single `access_epoch` row was bumped by every write of a Person, RelatedPerson, Consent,
CareTeam or Patient, so two such writes anywhere, in two unrelated families, queued on one row
lock until the first committed. Now each node of the facts walk ("Patient/1", "RelatedPerson/7",
"Person/3", "Practitioner/9", ...) has its own counter, plus the global key `*` (a reindex), and
a user's epoch is the sum of the counters of the keys its facts were read through
(storage/access_facts.py; docs/scaling.md "Access epochs"). The global value carries over to `*`,
so no cached facts survive the upgrade unnoticed.

Revision ID: 0009_access_epochs
Revises: 0008_approval_last_used
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_access_epochs"
down_revision = "0008_approval_last_used"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "access_epochs",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.execute("INSERT INTO access_epochs (key, value) SELECT '*', value FROM access_epoch")
    op.drop_table("access_epoch")


def downgrade() -> None:
    op.create_table(
        "access_epoch",
        sa.Column("id", sa.SmallInteger, primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
        sa.CheckConstraint("id = 1", name="access_epoch_one_row"),
    )
    # the sum only grows: a server that cached facts at any per-key epoch sees a larger number
    op.execute(
        "INSERT INTO access_epoch (id, value)"
        " SELECT 1, coalesce(sum(value), 0) + 1 FROM access_epochs"
    )
    op.drop_table("access_epochs")
