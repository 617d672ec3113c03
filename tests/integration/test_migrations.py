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


def test_bounded_index_keys_split_long_rows_already_stored(empty_database: str) -> None:
    """Migration 0006_bounded_index_keys: rows stored before it with a text of 1,000 to 2,700
    bytes in an indexed column keep a key of at most 1,000 bytes, their whole text beside it,
    exactly as the server writes new rows; a downgrade puts the whole text back."""
    from fhir_server.storage.search_index import KEY_BYTES, index_key

    migrate(empty_database, "0005_idempotency")
    long = "é" * 300 + "x" * 900 + "😀" * 100  # 2,000 bytes, the cut inside an emoji
    short = "ann"
    with psycopg.connect(empty_database, autocommit=True) as conn:
        for value in (long, short):
            conn.execute(
                "INSERT INTO search_string (resource_type, id, code, value, exact)"
                " VALUES ('Patient', %s, 'family', %s, %s)",
                (value[:3], value, value),
            )
            conn.execute(
                "INSERT INTO search_token (resource_type, id, code, system, value)"
                " VALUES ('Patient', %s, 'identifier', %s, %s)",
                (value[:3], value, value),
            )
            conn.execute(
                "INSERT INTO search_uri (resource_type, id, code, value)"
                " VALUES ('ValueSet', %s, 'url', %s)",
                (value[:3], value),
            )
    migrate(empty_database)
    key = index_key(long)[0]
    assert len(key.encode()) <= KEY_BYTES and key != long
    with psycopg.connect(empty_database) as conn:
        stored = {
            row[0]: row[1:]
            for row in conn.execute(
                "SELECT s.id, s.value, s.value_full, t.system, t.system_full, t.value, t.value_full,"
                " u.value, u.value_full FROM search_string s"
                " JOIN search_token t ON t.id = s.id JOIN search_uri u ON u.id = s.id"
            ).fetchall()
        }
    assert stored[long[:3]] == (key, long) * 4
    assert stored[short] == (short, None) * 4
    downgrade(empty_database, "0005_idempotency")
    with psycopg.connect(empty_database) as conn:
        values = conn.execute("SELECT value FROM search_string ORDER BY id").fetchall()
    assert sorted(v for (v,) in values) == sorted([long, short])
