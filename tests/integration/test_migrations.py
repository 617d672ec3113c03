"""The schema comes only from Alembic: upgrade, downgrade and upgrade again on a real database."""

from __future__ import annotations

import psycopg

from fhir_server.storage.database import downgrade, head_revision, migrate, schema_is_current


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        ).fetchall()
    return {r[0] for r in rows}


def test_upgrade_downgrade_upgrade(empty_database: str) -> None:
    assert tables(empty_database) == set()
    assert not schema_is_current(empty_database)
    migrate(empty_database)
    assert {"resources", "resource_history"} <= tables(empty_database)
    assert schema_is_current(empty_database)
    downgrade(empty_database, "base")
    assert tables(empty_database) == set()
    migrate(empty_database)
    assert schema_is_current(empty_database)
    assert head_revision() is not None


def test_migrated_schema_has_the_indexes_access_control_relies_on(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('resources', 'resource_history')"
        ).fetchall()
    defs = dict(rows)
    assert "gin (compartments)" in defs["resources_compartments_gin"]
    assert "gin (compartments)" in defs["resource_history_compartments_gin"]
