"""oauth: the SMART authorization server's clients, local accounts, codes, refresh tokens,
approvals, EHR launch contexts and used client-assertion ids (docs/smart.md)

Secrets are never stored: codes, refresh tokens and launch values are kept as SHA-256 digests,
passwords as argon2 hashes.

Revision ID: 0007_oauth
Revises: 0006_bounded_index_keys
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0007_oauth"
down_revision = "0006_bounded_index_keys"
branch_labels = None
depends_on = None



def _when(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "oauth_clients",
        sa.Column("client_id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        # `public` (PKCE, no secret) or `confidential` (private_key_jwt)
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("redirect_uris", ARRAY(sa.Text), nullable=False),
        sa.Column("scope", sa.Text, nullable=False),  # the scopes it may ask for
        sa.Column("launch_types", ARRAY(sa.Text), nullable=False),  # ehr, standalone
        sa.Column("grant_types", ARRAY(sa.Text), nullable=False),
        sa.Column("jwks_uri", sa.Text),
        sa.Column("jwks", JSONB),
        sa.Column("metadata", JSONB, nullable=False, server_default="{}"),
        _when("created_at", nullable=False),
        sa.CheckConstraint("kind IN ('public', 'confidential')", name="oauth_clients_kind"),
    )
    op.create_table(
        "oauth_users",
        sa.Column("username", sa.Text, primary_key=True),  # lower-cased
        sa.Column("password_hash", sa.Text, nullable=False),  # argon2id
        sa.Column("fhir_user", sa.Text, nullable=False),  # "Person/5", "Patient/1", ...
        sa.Column("failed_attempts", sa.Integer, nullable=False, server_default="0"),
        _when("locked_until"),
        _when("created_at", nullable=False),
    )
    op.create_table(
        "oauth_codes",
        sa.Column("code_hash", sa.Text, primary_key=True),
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("redirect_uri", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("fhir_user", sa.Text),
        sa.Column("patient", sa.Text),
        sa.Column("encounter", sa.Text),
        sa.Column("code_challenge", sa.Text),
        sa.Column("code_challenge_method", sa.Text),
        sa.Column("nonce", sa.Text),
        sa.Column("claims", JSONB, nullable=False, server_default="{}"),  # e.g. access_basis
        _when("auth_time", nullable=False),
        _when("expires_at", nullable=False),
        _when("used_at"),
    )
    op.create_table(
        "oauth_refresh_tokens",
        sa.Column("token_hash", sa.Text, primary_key=True),
        # every rotation of one grant shares the chain: reuse of a rotated token revokes it all
        sa.Column("chain", sa.Uuid, nullable=False),
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("fhir_user", sa.Text),
        sa.Column("patient", sa.Text),
        sa.Column("encounter", sa.Text),
        sa.Column("claims", JSONB, nullable=False, server_default="{}"),
        _when("issued_at", nullable=False),
        _when("expires_at"),
        _when("rotated_at"),
        _when("revoked_at"),
        _when("last_used_at"),
    )
    op.create_index("oauth_refresh_tokens_chain", "oauth_refresh_tokens", ["chain"])
    op.create_index(
        "oauth_refresh_tokens_subject", "oauth_refresh_tokens", ["subject", "client_id"]
    )
    op.create_table(
        "oauth_approvals",
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("patient", sa.Text, nullable=False, server_default=""),  # "" = no patient
        sa.Column("scope", sa.Text, nullable=False),
        _when("approved_at", nullable=False),
        _when("revoked_at"),
        sa.PrimaryKeyConstraint("subject", "client_id", "patient", name="oauth_approvals_pkey"),
    )
    op.create_table(
        "oauth_launches",
        sa.Column("launch_hash", sa.Text, primary_key=True),
        sa.Column("created_by", sa.Text, nullable=False),  # the EHR's client id
        sa.Column("client_id", sa.Text),  # the app it is for, when the EHR names one
        sa.Column("patient", sa.Text, nullable=False),
        sa.Column("encounter", sa.Text),
        sa.Column("fhir_user", sa.Text),
        _when("expires_at", nullable=False),
        _when("used_at"),
    )
    op.create_table(
        "oauth_assertions",  # the `jti` of each client assertion accepted, until it expires
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("jti", sa.Text, nullable=False),
        _when("expires_at", nullable=False),
        sa.PrimaryKeyConstraint("client_id", "jti", name="oauth_assertions_pkey"),
    )
    op.create_index("oauth_assertions_expires", "oauth_assertions", ["expires_at"])


def downgrade() -> None:
    for table in (
        "oauth_assertions",
        "oauth_launches",
        "oauth_approvals",
        "oauth_refresh_tokens",
        "oauth_codes",
        "oauth_users",
        "oauth_clients",
    ):
        op.drop_table(table)
