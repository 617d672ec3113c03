"""Alembic environment and versions: the only way the schema changes (see fhir_server.storage.migrate)."""
