"""The database schema as SQLAlchemy Core tables. Alembic migrations create it; keep them in step."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

metadata = MetaData()

# The current state of every resource: one row per (type, id), the latest version.
# A deleted resource keeps its row with deleted=true and no content, so that read answers 410.
resources = Table(
    "resources",
    metadata,
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("deleted", Boolean, nullable=False, server_default="false"),
    Column("content", JSONB, nullable=True),
    # "Patient/1", "RelatedPerson/9", ...: the compartments the resource is in, computed at write
    # time from the official CompartmentDefinitions. Access checks filter on it in SQL.
    Column("compartments", ARRAY(Text), nullable=False, server_default="{}"),
    # The acting identity that created the resource ("RelatedPerson/9"); null when unauthenticated.
    Column("created_by", Text, nullable=True),
    PrimaryKeyConstraint("resource_type", "id", name="resources_pkey"),
    Index("resources_compartments_gin", "compartments", postgresql_using="gin"),
    Index("resources_type_updated", "resource_type", "last_updated", "id"),
)

# Every version of every resource, including deletions (content null), written in the same
# transaction as the current state.
resource_history = Table(
    "resource_history",
    metadata,
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("deleted", Boolean, nullable=False, server_default="false"),
    # POST, PUT, PATCH or DELETE: the interaction that made this version (Bundle.entry.request).
    Column("method", String(8), nullable=False),
    Column("content", JSONB, nullable=True),
    Column("compartments", ARRAY(Text), nullable=False, server_default="{}"),
    PrimaryKeyConstraint("resource_type", "id", "version_id", name="resource_history_pkey"),
    Index("resource_history_updated", "last_updated"),
    Index("resource_history_type_updated", "resource_type", "last_updated"),
    Index("resource_history_compartments_gin", "compartments", postgresql_using="gin"),
)
