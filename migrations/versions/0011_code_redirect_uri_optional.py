"""oauth_codes.redirect_uri may be NULL: the authorization request had no `redirect_uri`

RFC 6749 4.1.3: the token request must carry `redirect_uri` only when the authorization request
did. A request may leave it out when the client registered exactly one; the code then records
that none was given (NULL), and the token endpoint does not ask for one.

Downgrade drops the codes without one (they live a minute) before the column is NOT NULL again.

Revision ID: 0011_code_redirect_uri_optional
Revises: 0010_audit_events
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_code_redirect_uri_optional"
down_revision = "0010_audit_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("oauth_codes", "redirect_uri", existing_type=sa.Text, nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM oauth_codes WHERE redirect_uri IS NULL")
    op.alter_column("oauth_codes", "redirect_uri", existing_type=sa.Text, nullable=False)
