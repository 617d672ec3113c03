"""approval last used: when an app last got a token by each remembered approval

The account's "Connected apps" page (docs/account-apps.md) says when each app the person approved
last used that approval: the token endpoint sets `oauth_approvals.last_used_at` whenever it issues
a token (a code redeemed or a refresh token rotated) for that account, client and patient. Null
until then, and for approvals made before this revision.

Revision ID: 0008_approval_last_used
Revises: 0007_oauth
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_approval_last_used"
down_revision = "0007_oauth"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "oauth_approvals", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("oauth_approvals", "last_used_at")
