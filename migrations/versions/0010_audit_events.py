"""AuditEvents in a table of their own, partitioned by month of `recorded`

Every request wrote an AuditEvent as a row of `resources` with a dozen rows of the generic search
index (and their B-tree entries): the bulk of the primary's writes. Now an AuditEvent is one row
of `audit_events`, partitioned by RANGE on `recorded` (one partition per calendar month, UTC, and
a DEFAULT partition so that no event is ever refused), with what its searches ask for as columns:
compartments (the security predicate, as `resources.compartments`), patient, agent and entity
references, type and subtype tokens, action, outcome, policies and tags; indexed by compartments,
patient, agent, entity, type (GIN), outcome and recorded (B-tree). Old months are archived and
dropped whole (`fhir-server audit archive`, docs/scaling.md "The audit stream").

The AuditEvents stored so far move here (their generic index rows are dropped); partitions are
made for each month they span and for the current and next month. Downgrade moves them back
into `resources`, without search-index rows: run `fhir-server reindex` after it.

Revision ID: 0010_audit_events
Revises: 0009_access_epochs
Create Date: 2026-12-04
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0010_audit_events"
down_revision = "0009_access_epochs"
branch_labels = None
depends_on = None

SEARCH_TABLES = (
    "search_string",
    "search_token",
    "search_date",
    "search_reference",
    "search_number",
    "search_quantity",
    "search_uri",
)

# A token's codings as `code`, `system|code` (`|code` with no system) and `system|`: the same
# encoding as storage/audit_events.py `_tokens`, in SQL
_TOKENS = """
CREATE FUNCTION pg_temp.audit_tokens(codings jsonb) RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
  SELECT coalesce(array_agg(DISTINCT token), '{}') FROM (
    SELECT c->>'code' AS token FROM jsonb_array_elements(codings) c
    UNION ALL SELECT coalesce(c->>'system', '') || '|' || (c->>'code')
      FROM jsonb_array_elements(codings) c
    UNION ALL SELECT (c->>'system') || '|' FROM jsonb_array_elements(codings) c
  ) t WHERE token IS NOT NULL
$$
"""
_REFERENCES = """
CREATE FUNCTION pg_temp.audit_references(items jsonb, element text) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
  SELECT coalesce(array_agg(DISTINCT i->element->>'reference'), '{}')
  FROM jsonb_array_elements(coalesce(items, '[]')) i WHERE i->element->>'reference' IS NOT NULL
$$
"""


def _month(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def _next(start: datetime) -> datetime:
    return datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE audit_events (
            id varchar(64) NOT NULL,
            recorded timestamptz NOT NULL,
            last_updated timestamptz NOT NULL,
            content jsonb NOT NULL,
            compartments text[] NOT NULL DEFAULT '{}',
            patients text[] NOT NULL DEFAULT '{}',
            agents text[] NOT NULL DEFAULT '{}',
            entities text[] NOT NULL DEFAULT '{}',
            types text[] NOT NULL DEFAULT '{}',
            subtypes text[] NOT NULL DEFAULT '{}',
            action text,
            outcome text,
            policies text[] NOT NULL DEFAULT '{}',
            tags text[] NOT NULL DEFAULT '{}',
            CONSTRAINT audit_events_pkey PRIMARY KEY (id, recorded)
        ) PARTITION BY RANGE (recorded)
        """
    )
    op.execute(
        "CREATE INDEX audit_events_compartments_gin ON audit_events USING gin (compartments)"
        " WITH (fastupdate = off)"
    )
    for column in ("patients", "agents", "entities", "types"):
        op.execute(f"CREATE INDEX audit_events_{column}_gin ON audit_events USING gin ({column})")
    op.execute("CREATE INDEX audit_events_recorded ON audit_events (recorded)")
    op.execute("CREATE INDEX audit_events_outcome ON audit_events (outcome, recorded)")
    op.execute("CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT")

    bind = op.get_bind()
    months = {
        _month(row[0])
        for row in bind.execute(
            sa.text(
                "SELECT DISTINCT date_trunc('month', (content->>'recorded')::timestamptz"
                " AT TIME ZONE 'UTC') FROM resources WHERE resource_type = 'AuditEvent'"
            )
        )
        if row[0] is not None
    }
    now = _month(datetime.now(UTC))
    months |= {now, _next(now)}
    for start in sorted(months):
        end = _next(start)
        op.execute(
            f"CREATE TABLE audit_events_{start.year:04d}_{start.month:02d} PARTITION OF"
            f" audit_events FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )

    op.execute(_TOKENS)
    op.execute(_REFERENCES)
    op.execute(
        """
        INSERT INTO audit_events (id, recorded, last_updated, content, compartments, patients,
            agents, entities, types, subtypes, action, outcome, policies, tags)
        SELECT id,
            coalesce((content->>'recorded')::timestamptz, last_updated),
            last_updated,
            content,
            compartments,
            ARRAY(SELECT DISTINCT r FROM unnest(
                pg_temp.audit_references(content->'agent', 'who')
                || pg_temp.audit_references(content->'entity', 'what')) r
              WHERE r LIKE 'Patient/%'),
            pg_temp.audit_references(content->'agent', 'who'),
            pg_temp.audit_references(content->'entity', 'what'),
            pg_temp.audit_tokens(
                CASE WHEN content ? 'type' THEN jsonb_build_array(content->'type')
                ELSE '[]'::jsonb END),
            pg_temp.audit_tokens(coalesce(content->'subtype', '[]')),
            content->>'action',
            content->>'outcome',
            ARRAY(SELECT DISTINCT p FROM jsonb_array_elements(coalesce(content->'agent', '[]')) a,
                  jsonb_array_elements_text(coalesce(a->'policy', '[]')) p),
            pg_temp.audit_tokens(coalesce(content->'meta'->'tag', '[]'))
        FROM resources WHERE resource_type = 'AuditEvent' AND NOT deleted
        """
    )
    for table in SEARCH_TABLES:
        op.execute(f"DELETE FROM {table} WHERE resource_type = 'AuditEvent'")
    op.execute("DELETE FROM resource_history WHERE resource_type = 'AuditEvent'")
    op.execute("DELETE FROM resources WHERE resource_type = 'AuditEvent'")


def downgrade() -> None:
    # back as current rows of version 1 (AuditEvents have no history rows); their search index
    # is rebuilt by `fhir-server reindex`
    op.execute(
        """
        INSERT INTO resources (resource_type, id, version_id, last_updated, deleted, content,
            compartments, created_by)
        SELECT 'AuditEvent', id, 1, last_updated, false, content, compartments, NULL
        FROM audit_events
        ON CONFLICT DO NOTHING
        """
    )
    op.execute("DROP TABLE audit_events")
