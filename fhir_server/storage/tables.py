"""The database schema as SQLAlchemy Core tables. Alembic migrations create it; keep them in step."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    text,
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
    # `deleted` is carried in the key's index so that searches check it without reading the row
    # (migration 0002).
    PrimaryKeyConstraint(
        "resource_type", "id", name="resources_pkey", postgresql_include=["deleted"]
    ),
    # no pending list: every restricted query scans this index (migration 0004)
    Index(
        "resources_compartments_gin",
        "compartments",
        postgresql_using="gin",
        postgresql_with={"fastupdate": "off"},
    ),
    Index("resources_type_updated", "resource_type", "last_updated", "id"),
    Index(
        "resources_created_by",
        "created_by",
        postgresql_where=text("created_by IS NOT NULL"),
    ),
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
    # The resource's creator, copied onto each version (migration 0003).
    Column("created_by", Text, nullable=True),
    PrimaryKeyConstraint("resource_type", "id", "version_id", name="resource_history_pkey"),
    Index("resource_history_updated", "last_updated"),
    Index("resource_history_type_updated", "resource_type", "last_updated"),
    Index(
        "resource_history_compartments_gin",
        "compartments",
        postgresql_using="gin",
        postgresql_with={"fastupdate": "off"},
    ),
)


# One counter per node of the access-facts walk ("Patient/1", "Person/3", ...) and the global key
# `*`, bumped in the same transaction as every write that can change facts read through that node
# (repository.bump_access_epochs). A user's epoch is the sum over the keys its facts were read
# through: a server may reuse the facts while it is unchanged (migration 0009, docs/scaling.md).
access_epochs = Table(
    "access_epochs",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", BigInteger, nullable=False),
)


# The first response to a POST with an `Idempotency-Key` (migration 0005): replayed for the same
# caller, path, key and body until it expires.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("scope", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("status", Integer, nullable=False),
    Column("headers", JSONB, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("scope", "key", name="idempotency_keys_pkey"),
    Index("idempotency_keys_expires", "expires_at"),
)


# Search index: one table per kind of search value, rows for the current version of each live
# resource, written with it. `code` is the SearchParameter code as it applies to `resource_type`.
# The columns after the key are what the search page asks of that kind of parameter.
def _index_table(
    name: str, *columns: Column[object], indexes: tuple[tuple[str, ...], ...]
) -> Table:
    table = Table(
        name,
        metadata,
        Column("resource_type", String(64), nullable=False),
        Column("id", String(64), nullable=False),
        Column("code", String(64), nullable=False),
        *columns,
    )
    Index(f"{name}_resource", table.c.resource_type, table.c.id)
    for position, names in enumerate(indexes, start=1):
        Index(f"{name}_{position}", *(table.c[n] for n in names), postgresql_include=["id"])
    return table


# A B-tree row holds at most about 2,700 bytes, so an indexed text column holds a key: the text
# itself, or for a text longer than KEY_BYTES (storage/search_index.py) its first KEY_BYTES bytes,
# with the whole text beside it in a `..._full` column that searches check where a key is
# ambiguous (migration 0006_bounded_index_keys). `_full` is null for the usual short text.

# Strings: `value` lower-cased without accents (starts-with and :contains), `exact` as written.
search_string = _index_table(
    "search_string",
    Column("value", Text(collation="C"), nullable=False),
    Column("exact", Text, nullable=False),
    Column("value_full", Text(collation="C"), nullable=True),
    indexes=(("resource_type", "code", "value"),),
)
# Tokens: a Coding, an Identifier, a code, a boolean...; `text` (normalized like strings) is the
# display, CodeableConcept.text or Identifier.type.text, for :text.
search_token = _index_table(
    "search_token",
    Column("system", Text, nullable=True),
    Column("value", Text, nullable=True),
    Column("text", Text(collation="C"), nullable=True),
    Column("system_full", Text, nullable=True),
    Column("value_full", Text, nullable=True),
    indexes=(("resource_type", "code", "value", "system"),),
)
# Dates: the range [low, high) a value covers at its precision; 0001-01-01 and 9999-12-31 stand
# for an open end (search/index.py DATE_MIN, DATE_MAX).
search_date = _index_table(
    "search_date",
    Column("low", DateTime(timezone=True), nullable=False),
    Column("high", DateTime(timezone=True), nullable=False),
    indexes=(("resource_type", "code", "low"), ("resource_type", "code", "high")),
)
# References: a resource on this server (`target_type`, `target_id`), else the reference text or
# canonical in `url`; a logical reference's identifier, for :identifier.
search_reference = _index_table(
    "search_reference",
    Column("target_type", String(64), nullable=True),
    Column("target_id", String(64), nullable=True),
    Column("url", Text, nullable=True),
    Column("identifier_system", Text, nullable=True),
    Column("identifier_value", Text, nullable=True),
    indexes=(
        ("resource_type", "code", "target_id", "target_type"),
        ("target_type", "target_id"),
    ),
)
# Numbers: the value (rounded to KEY_DIGITS significant digits, storage/search_index.py, so that
# its index row stays small) and the range [low, high) its precision implies (100 covers [99.5, 100.5)).
search_number = _index_table(
    "search_number",
    Column("value", Numeric, nullable=False),
    Column("low", Numeric, nullable=False),
    Column("high", Numeric, nullable=False),
    indexes=(("resource_type", "code", "value"),),
)
# Quantities: as numbers, with the unit's system and code (and the human unit, matched as a code).
search_quantity = _index_table(
    "search_quantity",
    Column("system", Text, nullable=True),
    Column("unit_code", Text, nullable=True),
    Column("unit", Text, nullable=True),
    Column("value", Numeric, nullable=False),
    Column("low", Numeric, nullable=False),
    Column("high", Numeric, nullable=False),
    indexes=(("resource_type", "code", "value"),),
)
# URIs, as written.
search_uri = _index_table(
    "search_uri",
    Column("value", Text(collation="C"), nullable=False),
    Column("value_full", Text(collation="C"), nullable=True),
    indexes=(("resource_type", "code", "value"),),
)

SEARCH_TABLES: dict[str, Table] = {
    "string": search_string,
    "token": search_token,
    "date": search_date,
    "reference": search_reference,
    "number": search_number,
    "quantity": search_quantity,
    "uri": search_uri,
}


# The AuditEvents (migration 0010, docs/scaling.md "The audit stream"): one row per event, in a
# table partitioned by month of `recorded` (RANGE; a DEFAULT partition takes any month that has no
# partition yet, so no event is ever refused). The columns after `content` are what searches ask
# of an AuditEvent, kept as arrays on the row instead of rows of the generic search index:
# `compartments` is the security predicate, exactly as `resources.compartments` is; references as
# written (`Patient/1`); tokens as `code`, `system|code` and `system|` (`|code` without a system),
# so that `&&` with the searched value matches each of R4's token forms. The key includes the
# partition column (PostgreSQL requires it); an event's id carries its `recorded` time
# (storage/audit_events.py `stamped_id`), so that a read by id looks in one partition.
audit_events = Table(
    "audit_events",
    metadata,
    Column("id", String(64), nullable=False),
    Column("recorded", DateTime(timezone=True), nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("content", JSONB, nullable=False),
    Column("compartments", ARRAY(Text), nullable=False, server_default="{}"),
    Column("patients", ARRAY(Text), nullable=False, server_default="{}"),
    Column("agents", ARRAY(Text), nullable=False, server_default="{}"),
    Column("entities", ARRAY(Text), nullable=False, server_default="{}"),
    Column("types", ARRAY(Text), nullable=False, server_default="{}"),
    Column("subtypes", ARRAY(Text), nullable=False, server_default="{}"),
    Column("action", Text, nullable=True),
    Column("outcome", Text, nullable=True),
    Column("policies", ARRAY(Text), nullable=False, server_default="{}"),
    Column("tags", ARRAY(Text), nullable=False, server_default="{}"),
    PrimaryKeyConstraint("id", "recorded", name="audit_events_pkey"),
    Index(
        "audit_events_compartments_gin",
        "compartments",
        postgresql_using="gin",
        postgresql_with={"fastupdate": "off"},
    ),
    Index("audit_events_patients_gin", "patients", postgresql_using="gin"),
    Index("audit_events_agents_gin", "agents", postgresql_using="gin"),
    Index("audit_events_entities_gin", "entities", postgresql_using="gin"),
    Index("audit_events_types_gin", "types", postgresql_using="gin"),
    Index("audit_events_recorded", "recorded"),
    Index("audit_events_outcome", "outcome", "recorded"),
    postgresql_partition_by="RANGE (recorded)",
)
