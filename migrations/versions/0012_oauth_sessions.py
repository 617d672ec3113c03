"""oauth_sessions: the sign-in sessions of the server's pages, on the server

A session cookie was a signed blob checked only for its signature and age: a copy kept working
after sign-out, after the account was removed, and after its password or FHIR user changed. Now
the cookie also carries a random session id, and a session is live only while its row is here
(stored as a SHA-256 digest, as codes and refresh tokens are). Sign-out deletes the row;
`fhir-server user remove` and `user add --replace` delete the account's rows in the same
transaction as the change. Every server process sees the same table.

Revision ID: 0012_oauth_sessions
Revises: 0011_code_redirect_uri_optional
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_oauth_sessions"
down_revision = "0011_code_redirect_uri_optional"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oauth_sessions",
        sa.Column("session_hash", sa.Text, primary_key=True),
        # the account: "local:<username>" or "oidc:<issuer>|<sub>"
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("fhir_user", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("oauth_sessions_subject", "oauth_sessions", ["subject"])


def downgrade() -> None:
    op.drop_table("oauth_sessions")
