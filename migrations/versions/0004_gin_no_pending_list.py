"""compartment indexes without a pending list

A GIN index with `fastupdate` collects new entries in a pending list that every scan reads in
full until a vacuum merges it. With an AuditEvent written for every request, the list of
`resources_compartments_gin` stays full (4 MB by default), and every restricted search paid for
reading it: 22 ms of PostgreSQL CPU per request in the search benchmark. Entries now go straight
into the index.

Revision ID: 0004_gin_no_pending_list
Revises: 0003_access
Create Date: 2026-11-29
"""

from alembic import op

revision = "0004_gin_no_pending_list"
down_revision = "0003_access"
branch_labels = None
depends_on = None

INDEXES = ("resources_compartments_gin", "resource_history_compartments_gin")


def upgrade() -> None:
    for index in INDEXES:
        op.execute(f"ALTER INDEX {index} SET (fastupdate = off)")
        # what was pending goes into the index now, not at the next vacuum
        op.execute(f"SELECT gin_clean_pending_list('{index}'::regclass)")


def downgrade() -> None:
    for index in INDEXES:
        op.execute(f"ALTER INDEX {index} RESET (fastupdate)")
